"""Which terminal executions have been counted, for exactly-once counting by execution_id."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

__all__ = ["CHUNK", "SeenExecutions"]

CHUNK = 4096
"""Ids are grouped in arrival order into chunks of this many, each with its latest event time,
so that forgetting by age costs one float per chunk, not one per id."""


class _Chunk:
    """Ids that arrived together, oldest first, and the latest event time among them."""

    __slots__ = ("ids", "max_time")

    def __init__(self, ids: list[str], max_time: float) -> None:
        self.ids = ids
        self.max_time = max_time


class SeenExecutions:
    """The execution ids already counted, forgetting the oldest beyond the retention.

    Retention: at most `capacity` ids (the oldest arrivals are forgotten first), and ids whose
    chunk's latest event time is older than `retention_seconds` before the newest event time
    seen. An id costs its string, a set slot and a list slot in its chunk: measured by
    `make bench`.
    """

    __slots__ = ("_chunks", "_ids", "capacity", "chunk", "newest", "retention_seconds")

    def __init__(
        self, capacity: int, retention_seconds: float = float("inf"), *, chunk: int = CHUNK
    ) -> None:
        self.capacity = capacity
        self.chunk = chunk
        """Ids per chunk (CHUNK; tests make it small)."""
        self.retention_seconds = retention_seconds
        self.newest = float("-inf")
        """The latest event time added; the age horizon is measured from it, so that replay
        and live ingestion forget the same ids whatever the wall clock says."""
        self._ids: set[str] = set()
        self._chunks: deque[_Chunk] = deque()  # oldest first; the ids of `_ids`, each once

    @property
    def ids(self) -> set[str]:
        """The remembered ids as a set, for fast membership tests in hot loops (read only)."""
        return self._ids

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        """The ids, oldest first."""
        return itertools.chain.from_iterable(c.ids for c in self._chunks)

    def add(self, execution_id: str, event_time: float) -> None:
        """Remember an id (not already present)."""
        self.add_batch([execution_id], event_time)

    def add_batch(self, ids: list[str], max_event_time: float) -> None:
        """Remember new ids (none already present) of one request at once; they share the
        request's latest event time for retention, which keeps them at least as long."""
        if not ids:
            return
        self._ids.update(ids)
        if max_event_time > self.newest:
            self.newest = max_event_time
        chunks = self._chunks
        last = chunks[-1] if chunks else None
        if last is not None and len(last.ids) < self.chunk:
            last.ids.extend(ids)
            if max_event_time > last.max_time:
                last.max_time = max_event_time
        else:
            chunks.append(_Chunk(list(ids), max_event_time))
            front = chunks[0]
            if len(chunks) > 1 and front.max_time < self.newest - self.retention_seconds:
                self._forget(len(front.ids))
        if len(self._ids) > self.capacity:
            self._forget(len(self._ids) - self.capacity)

    def _forget(self, n: int) -> None:
        """Forget the `n` oldest ids."""
        ids, chunks = self._ids, self._chunks
        while n > 0 and chunks:
            front = chunks[0]
            take = min(n, len(front.ids))
            for execution_id in itertools.islice(front.ids, take):
                ids.discard(execution_id)
            n -= take
            if take == len(front.ids):
                chunks.popleft()
            else:
                del front.ids[:take]

    def chunks(self) -> list[tuple[list[str], float]]:
        """A copy of the ids in chunks, oldest first, each with its latest event time (for
        snapshots: taken at once, so later changes do not show)."""
        return [(list(c.ids), c.max_time) for c in self._chunks]

    def restore(self, chunks: Iterable[tuple[Sequence[str], float]]) -> None:
        """Replace the contents with snapshot chunks, oldest first (in bulk: this is on the
        path from start to SERVING)."""
        known: set[str] = set()
        kept: deque[_Chunk] = deque()
        newest = float("-inf")
        for ids, max_time in chunks:
            if not ids:
                continue
            kept.append(_Chunk(list(ids), max_time))
            known.update(ids)
            newest = max(newest, max_time)
        self._chunks = kept
        self._ids = known
        self.newest = newest
        if len(known) > self.capacity:
            self._forget(len(known) - self.capacity)
