"""Which terminal executions have been counted, for exactly-once counting by execution_id."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence

__all__ = ["CHUNK", "SeenExecutions"]

CHUNK = 4096
"""Ids are grouped in arrival order into chunks of this many, each with its latest event time,
so that forgetting by age costs one float per chunk, not one per id."""


class SeenExecutions:
    """The execution ids already counted, forgetting the oldest beyond the retention.

    Retention: at most `capacity` ids (the oldest arrivals are forgotten first), and ids whose
    chunk's latest event time is older than `retention_seconds` before the newest event time
    seen. An id costs its string, a set slot and a deque slot: measured by `make bench`.
    """

    __slots__ = ("_chunks", "_ids", "_order", "capacity", "newest", "retention_seconds")

    def __init__(self, capacity: int, retention_seconds: float = float("inf")) -> None:
        self.capacity = capacity
        self.retention_seconds = retention_seconds
        self.newest = float("-inf")
        """The latest event time added; the age horizon is measured from it, so that replay
        and live ingestion forget the same ids whatever the wall clock says."""
        self._ids: set[str] = set()
        self._order: deque[str] = deque()
        self._chunks: deque[list[float]] = deque()  # [count, max event time], oldest first

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
        return iter(self._order)

    def add(self, execution_id: str, event_time: float) -> None:
        """Remember an id (not already present)."""
        self.add_batch([execution_id], event_time)

    def add_batch(self, ids: list[str], max_event_time: float) -> None:
        """Remember new ids (none already present) of one request at once; they share the
        request's latest event time for retention, which keeps them at least as long."""
        if not ids:
            return
        self._ids.update(ids)
        order = self._order
        order.extend(ids)
        if max_event_time > self.newest:
            self.newest = max_event_time
        chunks = self._chunks
        last = chunks[-1] if chunks else None
        if last is not None and last[0] < CHUNK:
            last[0] += len(ids)
            if max_event_time > last[1]:
                last[1] = max_event_time
        else:
            chunks.append([len(ids), max_event_time])
            front = chunks[0]
            if len(chunks) > 1 and front[1] < self.newest - self.retention_seconds:
                self._forget(int(front[0]))
        if len(order) > self.capacity:
            self._forget(len(order) - self.capacity)

    def _forget(self, n: int) -> None:
        order, ids, chunks = self._order, self._ids, self._chunks
        for _ in range(n):
            ids.discard(order.popleft())
        while n > 0 and chunks:
            front = chunks[0]
            take = min(n, int(front[0]))
            front[0] -= take
            n -= take
            if front[0] <= 0:
                chunks.popleft()

    def chunks(self) -> list[tuple[list[str], float]]:
        """A copy of the ids in chunks, oldest first, each with its latest event time (for
        snapshots: taken at once, so later changes do not show)."""
        order = list(self._order)
        out: list[tuple[list[str], float]] = []
        start = 0
        for count, max_time in self._chunks:
            end = start + int(count)
            out.append((order[start:end], max_time))
            start = end
        return out

    def restore(self, chunks: Iterable[tuple[Sequence[str], float]]) -> None:
        """Replace the contents with snapshot chunks, oldest first (in bulk: this is on the
        path from start to SERVING)."""
        order: deque[str] = deque()
        known: set[str] = set()
        bounds: deque[list[float]] = deque()
        newest = float("-inf")
        for ids, max_time in chunks:
            before = len(order)
            order.extend(ids)
            known.update(ids)  # from the chunk, not the deque: iterating a list is faster
            if len(order) > before:
                bounds.append([len(order) - before, max_time])
                newest = max(newest, max_time)
        self._order = order
        self._ids = known
        self._chunks = bounds
        self.newest = newest
        if len(order) > self.capacity:
            self._forget(len(order) - self.capacity)
