"""Which terminal executions have been counted, for exactly-once counting by execution_id."""

from __future__ import annotations

import itertools
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import crc32c

__all__ = ["CHUNK", "PROBES", "ImageBuilder", "Remembered", "SeenExecutions"]

CHUNK = 4096
"""Ids are grouped in arrival order into chunks of this many, each with its latest event time,
so that forgetting by age costs one float per chunk, not one per id."""

PROBES = 32
"""A restored id sits at most this many slots past its hash's slot in the table. One that would
sit further (only ids made to collide get there) goes into a dict instead, so that a lookup
never walks a long run of colliding entries."""

STEP = 4096
"""Ids per slice of the work done beside serving (ImageBuilder's for a snapshot, settle's after
a restart), between which requests are let in: a few milliseconds each."""


def _hash(data: bytes) -> int:
    """The hash the restored table is built on: stable from one process to the next, unlike
    Python's own."""
    return int(crc32c.crc32c(data))


class _Chunk:
    """Ids that arrived together, oldest first, and the latest event time among them; a
    closed chunk (restored from a snapshot's compact form) takes no more."""

    __slots__ = ("closed", "ids", "max_time")

    def __init__(self, ids: list[str], max_time: float, closed: bool = False) -> None:
        self.ids = ids
        self.max_time = max_time
        self.closed = closed


class Remembered:
    """Execution ids as a snapshot keeps them, in a form that loads without a Python object per
    id (a restart restores a million of them before it can serve).

    Entry `i` (oldest first) is the UTF-8 text `blob[starts[i] - base : starts[i + 1] - base]`,
    and `hashes[i]` is its CRC-32C. `table` is an open-addressing hash table over the entries
    (slot = hash & mask, linear probing, each slot an entry + 1, 0 when empty); `overflow` holds
    the entries that would sit more than PROBES slots past their own. The entries come in
    chunks: chunk `k` ends before entry `ends[k]` and has the latest event time `times[k]`.

    Read only once built: the owner forgets its oldest entries by moving a watermark."""

    __slots__ = ("base", "blob", "ends", "hashes", "mask", "overflow", "starts", "table", "times")

    def __init__(
        self,
        blob: bytes,
        starts: array[int],
        hashes: array[int],
        table: array[int],
        overflow: dict[str, int],
        ends: list[int],
        times: list[float],
    ) -> None:
        self.blob = blob
        self.starts = starts
        self.hashes = hashes
        self.table = table
        self.overflow = overflow
        self.ends = ends
        self.times = times
        self.base: int = starts[0]
        self.mask = len(table) - 1

    def __len__(self) -> int:
        return len(self.hashes)

    def entry(self, i: int) -> str:
        """The id of entry `i`."""
        base = self.base
        return self.blob[self.starts[i] - base : self.starts[i + 1] - base].decode()

    def find(self, execution_id: str, first: int) -> bool:
        """Whether the id is one of the entries from `first` on."""
        data = execution_id.encode()
        size = len(data)
        table, hashes, mask = self.table, self.hashes, self.mask
        h = _hash(data)
        slot = h & mask
        for _ in range(PROBES):
            entry = table[slot]
            if entry == 0:
                return False
            entry -= 1
            if hashes[entry] == h:
                starts, base = self.starts, self.base
                start = starts[entry] - base
                if starts[entry + 1] - base - start == size and self.blob.startswith(data, start):
                    return entry >= first
            slot = (slot + 1) & mask
        return self.overflow.get(execution_id, -1) >= first

    def check(self) -> None:
        """Raise ValueError when the parts do not fit together (a snapshot read back)."""
        n = len(self.hashes)
        if len(self.starts) != n + 1:
            raise ValueError(f"{len(self.starts)} id offsets for {n} ids")
        if self.starts[n] - self.base != len(self.blob):
            raise ValueError("the id offsets disagree with the ids' bytes")
        if len(self.table) < 2 or len(self.table) & self.mask:
            raise ValueError(f"an id table of {len(self.table)} slots")
        if len(self.ends) != len(self.times) or (self.ends and self.ends[-1] != n):
            raise ValueError("the id chunks disagree with the ids")
        if any(not 0 <= entry < n for entry in self.overflow.values()):
            raise ValueError("an overflow id out of range")


def _empty() -> Remembered:
    return Remembered(b"", array("Q", [0]), array("I"), array("I", [0, 0]), {}, [], [])


class SeenExecutions:
    """The execution ids already counted, forgetting the oldest beyond the retention.

    Retention: at most `capacity` ids (the oldest arrivals are forgotten first), and ids whose
    chunk's latest event time is older than `retention_seconds` before the newest event time
    seen.

    Two generations: the ids restored from a snapshot stay in its compact form (Remembered, the
    oldest), and ids counted since live in a set and in chunk lists. A live id costs its string,
    a set slot and a list slot; a restored one its bytes, 8 bytes of offset, 4 of hash and 8 to 16
    of table: both measured by `make bench`.
    """

    __slots__ = (
        "_chunks",
        "_first",
        "_front",
        "_ids",
        "_old",
        "capacity",
        "chunk",
        "newest",
        "retention_seconds",
    )

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
        self._old: Remembered | None = None  # restored: older than every live id
        self._first = 0  # the old entries before this one are forgotten
        self._front = 0  # the old chunk holding entry `_first`

    @property
    def ids(self) -> set[str]:
        """The ids counted since the restore, as a set, for fast membership tests in hot loops
        (read only); `restored` holds the rest."""
        return self._ids

    @property
    def restored(self) -> Remembered | None:
        """The restored ids still remembered, from entry `restored_from` on; None when there
        are none."""
        return self._old

    @property
    def restored_from(self) -> int:
        return self._first

    def __contains__(self, execution_id: object) -> bool:
        if execution_id in self._ids:
            return True
        old = self._old
        return (
            old is not None
            and isinstance(execution_id, str)
            and old.find(execution_id, self._first)
        )

    def __len__(self) -> int:
        old = self._old
        return len(self._ids) + (len(old) - self._first if old is not None else 0)

    def __iter__(self) -> Iterator[str]:
        """The ids, oldest first."""
        return itertools.chain.from_iterable(ids for ids, _ in self._all_chunks())

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
        if last is not None and len(last.ids) < self.chunk and not last.closed:
            last.ids.extend(ids)
            if max_event_time > last.max_time:
                last.max_time = max_event_time
        else:
            chunks.append(_Chunk(list(ids), max_event_time))
            horizon = self.newest - self.retention_seconds
            old = self._old
            if old is not None:  # the oldest chunk is a restored one
                if old.times[self._front] < horizon:
                    self._forget(old.ends[self._front] - self._first)
            elif len(chunks) > 1 and chunks[0].max_time < horizon:
                self._forget(len(chunks[0].ids))
        count = len(self)
        if count > self.capacity:
            self._forget(count - self.capacity)

    def settle(self, step: int = STEP) -> Iterator[int]:
        """Turn the restored ids into live ones a slice at a time, yielding the number done
        after each slice, so that lookups stop paying for the compact form (a hash and a probe
        for every id the live set lacks). Callers see no change in between: the slices build a
        set and lists aside, and the last step swaps them in, with the ids counted meanwhile
        added and those forgotten meanwhile left out. A restore meanwhile abandons it."""
        old = self._old
        if old is None:
            return
        first0, front0, n = self._first, self._front, len(old)
        known: set[str] = set()
        lists: list[list[str]] = [[] for _ in range(front0, len(old.ends))]
        i, k = first0, front0
        while i < n:
            stop = min(i + step, n)
            batch = [old.entry(j) for j in range(i, stop)]
            known.update(batch)
            pos = 0
            while pos < len(batch):  # into the lists of the chunks they belong to
                take = min(len(batch) - pos, old.ends[k] - (i + pos))
                lists[k - front0].extend(batch[pos : pos + take])
                pos += take
                if i + pos == old.ends[k]:
                    k += 1
            i = stop
            yield i - first0
            if self._old is not old:
                return
        drop = self._first - first0  # forgotten while the slices ran
        chunks: deque[_Chunk] = deque()
        for index, ids in enumerate(lists):
            if drop >= len(ids):
                known.difference_update(ids)
                drop -= len(ids)
                continue
            if drop:
                known.difference_update(ids[:drop])
                del ids[:drop]
                drop = 0
            chunks.append(_Chunk(ids, old.times[front0 + index], closed=True))
        known.update(self._ids)
        chunks.extend(self._chunks)
        self._ids, self._chunks = known, chunks
        self._old = None
        self._first = self._front = 0

    def _forget(self, n: int) -> None:
        """Forget the `n` oldest ids."""
        old = self._old
        if old is not None:
            take = min(n, len(old) - self._first)
            self._first += take
            n -= take
            ends = old.ends
            while self._front < len(ends) and ends[self._front] <= self._first:
                self._front += 1
            if self._first >= len(old):
                self._old = None
                self._first = self._front = 0
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

    def _all_chunks(self) -> Iterator[tuple[list[str], float]]:
        old = self._old
        if old is not None:
            start = self._first
            for k in range(self._front, len(old.ends)):
                stop = old.ends[k]
                yield [old.entry(i) for i in range(start, stop)], old.times[k]
                start = stop
        for c in self._chunks:
            yield c.ids, c.max_time

    def chunks(self) -> list[tuple[list[str], float]]:
        """A copy of the ids in chunks, oldest first, each with its latest event time (taken
        at once, so later changes do not show)."""
        return [(list(ids), t) for ids, t in self._all_chunks()]

    def restore(self, chunks: Iterable[tuple[Sequence[str], float]] | Remembered) -> None:
        """Replace the contents with those of a snapshot: its compact form as it is, or chunks
        of ids, oldest first (an older snapshot's form)."""
        self._ids = set()
        self._chunks = deque()
        self._old = None
        self._first = self._front = 0
        if isinstance(chunks, Remembered):
            if len(chunks):
                self._old = chunks
            self.newest = max(chunks.times, default=float("-inf"))
        else:
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
        count = len(self)
        if count > self.capacity:
            self._forget(count - self.capacity)


class ImageBuilder:
    """The compact form (Remembered) of the ids a SeenExecutions holds at one moment, built a
    slice at a time so that a snapshot can let ingestion in between slices.

    What it covers is taken at construction: the restored generation is read only and only
    referred to; the live chunks are copied."""

    def __init__(self, seen: SeenExecutions) -> None:
        self._old = seen.restored
        self._first = seen.restored_from
        self._front = seen._front
        self._live = [(list(c.ids), c.max_time) for c in seen._chunks]
        self.result = _empty()

    def steps(self, step: int = STEP) -> Iterator[int]:
        """Do the work, yielding the number of ids done after each slice; `result` is the form
        once the iterator is exhausted."""
        starts: array[int]
        hashes: array[int]
        ends: list[int] = []
        times: list[float] = []
        buffer = bytearray()
        old = self._old
        if old is not None:
            first = self._first
            starts = old.starts[first:]
            hashes = old.hashes[first:]
            base = old.base
            buffer += memoryview(old.blob)[old.starts[first] - base :]
            for k in range(self._front, len(old.ends)):
                ends.append(old.ends[k] - first)
                times.append(old.times[k])
        else:
            starts = array("Q", [0])
            hashes = array("I")
        offset = starts[len(starts) - 1]
        done = len(hashes)
        for ids, max_time in self._live:
            for execution_id in ids:
                data = execution_id.encode()
                buffer += data
                hashes.append(_hash(data))
                offset += len(data)
                starts.append(offset)
                done += 1
                if done % step == 0:
                    yield done
            ends.append(done)
            times.append(max_time)
        blob = bytes(buffer)
        del buffer
        yield done
        n = len(hashes)
        slots = 8
        while slots < 2 * n:
            slots *= 2
        mask = slots - 1
        table = array("I" if n < 2**32 - 1 else "Q", [0]) * slots
        yield done
        overflow: dict[str, int] = {}
        image = Remembered(blob, starts, hashes, table, overflow, ends, times)
        for i in range(n):
            slot = hashes[i] & mask
            placed = False
            for _ in range(PROBES):
                if table[slot] == 0:
                    table[slot] = i + 1
                    placed = True
                    break
                slot = (slot + 1) & mask
            if not placed:
                overflow[image.entry(i)] = i
            if (i + 1) % step == 0:
                yield done + i + 1
        self.result = image
