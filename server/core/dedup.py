"""Which terminal executions have been counted, for exactly-once counting.

An execution is its pipeline and its execution_id together (Airflow's `scheduled__<date>` run
ids repeat across DAGs; a dbt invocation id is shared by every model of one run), remembered as
one string, `key(pipeline_id, execution_id)`. Snapshots written before that (format versions 1
and 2) hold bare execution ids: they come back as `legacy_key`s of the pseudo-team LEGACY, and
such an id is a duplicate for every pipeline until it is forgotten.

What is forgotten, and when, cannot be moved by what a client sends:
- by age: an id is kept at least `retention_seconds` after the server received it (the time of
  its request, in the log, so that replay forgets as the live server did); event times, which
  are the runner's, play no part;
- by count: beyond `capacity` ids, the team holding the most loses its oldest first, down to a
  common level with the next largest (max-min fairness). A team is never cut while another holds
  more than it, so one team flooding ids takes them from its own share.
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import crc32c

__all__ = [
    "CHUNK",
    "LEGACY",
    "PROBES",
    "ImageBuilder",
    "Remembered",
    "SeenExecutions",
    "key",
    "legacy_key",
]

CHUNK = 4096
"""Ids of one team are grouped in arrival order into chunks of this many, each with the latest
time one of them was received, so that forgetting by age costs one float per chunk."""

PROBES = 32
"""A restored id sits at most this many slots past its hash's slot in the table. One that would
sit further (only ids made to collide get there) goes into a dict instead, so that a lookup
never walks a long run of colliding entries."""

STEP = 4096
"""Ids per slice of the work done beside serving (ImageBuilder's for a snapshot, settle's after
a restart), between which requests are let in: a few milliseconds each."""

LEGACY = ""
"""The team of the bare execution ids restored from a snapshot of format 1 or 2 (no real team
is empty): they take part in forgetting by count as one team of their own."""


def key(pipeline_id: str, execution_id: str) -> str:
    """The string an execution is remembered by. The pipeline's length comes first, so that no
    two pairs give the same key, and a key begins with a digit, unlike a legacy_key."""
    return f"{len(pipeline_id)}:{pipeline_id}{execution_id}"


def legacy_key(execution_id: str) -> str:
    """The string a bare execution id of an older snapshot is remembered by."""
    return ":" + execution_id


def _hash(data: bytes) -> int:
    """The hash the restored table is built on: stable from one process to the next, unlike
    Python's own."""
    return int(crc32c.crc32c(data))


class _Chunk:
    """Ids of one team that arrived together, oldest first, and the latest time one of them was
    received. A restored chunk holds no strings: its ids are the entries `first` to `end` of
    the restored compact form (`first` moves up as they are forgotten), until settle turns them
    into strings. A closed chunk (every restored one) takes no more ids."""

    __slots__ = ("closed", "end", "first", "ids", "max_time", "team")

    def __init__(
        self,
        team: str,
        ids: list[str],
        max_time: float,
        closed: bool = False,
        first: int = 0,
        end: int = 0,
    ) -> None:
        self.team = team
        self.ids = ids
        self.max_time = max_time
        self.closed = closed
        self.first = first
        self.end = end

    def size(self) -> int:
        return len(self.ids) + self.end - self.first


class _Team:
    """One team's share: how many ids it holds, and its chunks holding any, oldest first."""

    __slots__ = ("chunks", "count", "team")

    def __init__(self, team: str) -> None:
        self.team = team
        self.count = 0
        self.chunks: deque[_Chunk] = deque()


class Remembered:
    """Keys as a snapshot keeps them, in a form that loads without a Python object per key (a
    restart restores a million of them before it can serve).

    Entry `i` (oldest first) is the UTF-8 text `blob[starts[i] - base : starts[i + 1] - base]`,
    and `hashes[i]` is its CRC-32C. `table` is an open-addressing hash table over the entries
    (slot = hash & mask, linear probing, each slot an entry + 1, 0 when empty); `overflow` holds
    the entries that would sit more than PROBES slots past their own. The entries come in
    chunks: chunk `k` ends before entry `ends[k]`, belongs to team `teams[k]` and was last
    received at `times[k]`.

    Read only once built: its owner forgets entries by moving each chunk's first entry."""

    __slots__ = (
        "base",
        "blob",
        "ends",
        "hashes",
        "legacy",
        "mask",
        "overflow",
        "starts",
        "table",
        "teams",
        "times",
    )

    def __init__(
        self,
        blob: bytes,
        starts: array[int],
        hashes: array[int],
        table: array[int],
        overflow: dict[str, int],
        ends: list[int],
        times: list[float],
        teams: list[str],
    ) -> None:
        self.blob = blob
        self.starts = starts
        self.hashes = hashes
        self.table = table
        self.overflow = overflow
        self.ends = ends
        self.times = times
        self.teams = teams
        self.base: int = starts[0]
        self.mask = len(table) - 1
        self.legacy = LEGACY in teams
        """Whether some entries are bare ids of an older snapshot (legacy_key)."""

    def __len__(self) -> int:
        return len(self.hashes)

    def entry(self, i: int) -> str:
        """The key of entry `i`."""
        base = self.base
        return self.blob[self.starts[i] - base : self.starts[i + 1] - base].decode()

    def index(self, text: str) -> int:
        """The entry holding the key `text`, or -1."""
        data = text.encode()
        size = len(data)
        table, hashes, mask = self.table, self.hashes, self.mask
        h = _hash(data)
        slot = h & mask
        for _ in range(PROBES):
            entry = table[slot]
            if entry == 0:
                return -1
            entry -= 1
            if hashes[entry] == h:
                starts, base = self.starts, self.base
                start = starts[entry] - base
                if starts[entry + 1] - base - start == size and self.blob.startswith(data, start):
                    return entry
            slot = (slot + 1) & mask
        return self.overflow.get(text, -1)

    def holds(self, pipeline_id: str, execution_id: str) -> bool:
        """Whether an entry is the execution's key, or its bare id from an older snapshot."""
        if self.index(key(pipeline_id, execution_id)) >= 0:
            return True
        return self.legacy and self.index(legacy_key(execution_id)) >= 0

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
        if len(self.teams) != len(self.ends):
            raise ValueError("the id chunks disagree with their teams")
        if any(b < a for a, b in itertools.pairwise([0, *self.ends])):
            raise ValueError("the id chunks are out of order")
        if any(not 0 <= entry < n for entry in self.overflow.values()):
            raise ValueError("an overflow id out of range")


def _empty() -> Remembered:
    return Remembered(b"", array("Q", [0]), array("I"), array("I", [0, 0]), {}, [], [], [])


class SeenExecutions:
    """The keys of the executions already counted, forgetting by age and by count (see the
    module's docstring).

    Two generations: the keys restored from a snapshot stay in its compact form (Remembered,
    the oldest), and keys counted since live in a set and in chunk lists. A live key costs its
    string, a set slot and a list slot; a restored one its bytes, 8 bytes of offset, 4 of hash
    and 8 to 16 of table: both measured by `make bench`.
    """

    __slots__ = (
        "_chunks",
        "_count",
        "_emptied",
        "_ids",
        "_left",
        "_old",
        "_old_chunks",
        "_teams",
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
        """The latest time ids were received; the age horizon is measured from it."""
        self._ids: set[str] = set()
        self._chunks: deque[_Chunk] = deque()  # every team's, oldest first; some emptied
        self._emptied = 0  # chunks in `_chunks` emptied by count (not yet dropped)
        self._teams: dict[str, _Team] = {}
        self._count = 0
        self._old: Remembered | None = None  # restored: older than every live key
        self._old_chunks: list[_Chunk] = []  # chunk k of `_old`
        self._left = 0  # entries of `_old` not yet forgotten nor settled

    @property
    def ids(self) -> set[str]:
        """The keys counted since the restore (or settled since), as a set, for fast membership
        tests in hot loops (read only); the restored generation holds the rest."""
        return self._ids

    @property
    def restored(self) -> Remembered | None:
        """The restored compact form while some of its keys are still remembered in it; None
        when there are none."""
        return self._old

    @property
    def legacy(self) -> int:
        """How many bare ids of an older snapshot are remembered."""
        share = self._teams.get(LEGACY)
        return share.count if share is not None else 0

    def in_restored(self, text: str) -> bool:
        """Whether the key `text` is among the restored ones still remembered."""
        old = self._old
        if old is None:
            return False
        i = old.index(text)
        if i < 0:
            return False
        c = self._old_chunks[bisect.bisect_right(old.ends, i)]
        return c.first <= i < c.end  # a settled chunk's range is empty

    def __contains__(self, text: object) -> bool:
        if text in self._ids:
            return True
        return isinstance(text, str) and self.in_restored(text)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        """The keys, in the order of their chunks (oldest first)."""
        return itertools.chain.from_iterable(ids for _, ids, _ in self._all_chunks())

    def held(self, team: str) -> int:
        """How many keys `team` holds."""
        share = self._teams.get(team)
        return share.count if share is not None else 0

    def add(self, team: str, text: str, received: float) -> None:
        """Remember a key (not already present)."""
        self.add_batch(team, [text], received)

    def add_batch(self, team: str, keys: list[str], received: float) -> None:
        """Remember new keys (none already present) of one team, received at `received`."""
        if not keys:
            return
        self._ids.update(keys)
        if received > self.newest:
            self.newest = received
        share = self._teams.get(team)
        if share is None:
            share = self._teams[team] = _Team(team)
        share.count += len(keys)
        self._count += len(keys)
        last = share.chunks[-1] if share.chunks else None
        if last is not None and len(last.ids) < self.chunk and not last.closed:
            last.ids.extend(keys)
            if received > last.max_time:
                last.max_time = received
        else:
            c = _Chunk(team, list(keys), received)
            share.chunks.append(c)
            self._chunks.append(c)
            self._expire()
        if self._count > self.capacity:
            self._shed(self._count - self.capacity)

    def _expire(self) -> None:
        """Forget the oldest chunks while they were last received longer than the retention
        before the newest time (and drop the emptied ones in front)."""
        horizon = self.newest - self.retention_seconds
        while len(self._chunks) > 1:
            front = self._chunks[0]
            size = front.size()
            if size and front.max_time >= horizon:
                return
            if size:  # the oldest chunk overall is its team's oldest: now emptied
                self._forget(self._teams[front.team], size)
            chunks = self._chunks  # a new queue, without the emptied ones, when compacted
            if chunks and chunks[0] is front:
                chunks.popleft()
                self._emptied -= 1

    def _shed(self, excess: int) -> None:
        """Forget `excess` keys, from the teams that hold the most (module docstring)."""
        top: _Team | None = None
        most = second = 0
        for share in self._teams.values():
            if share.count > most:
                top, most, second = share, share.count, most
            elif share.count > second:
                second = share.count
        if top is not None and most - excess >= second:  # the largest alone, still the largest
            self._forget(top, excess)
            return
        # Down to a common level: the k largest keep `level` each, and `extra` of them, the
        # first in the teams' order, one more.
        ranked = sorted(self._teams.values(), key=lambda s: -s.count)
        total = k = 0
        while k < len(ranked):
            total += ranked[k].count
            k += 1
            below = ranked[k].count if k < len(ranked) else 0
            if total - k * below >= excess:
                break
        level, extra = divmod(total - excess, k)
        cut = {share.team for share in ranked[:k]}
        for share in list(self._teams.values()):
            if share.team in cut:
                self._forget(share, share.count - level - (1 if extra > 0 else 0))
                extra -= 1

    def _forget(self, share: _Team, n: int) -> None:
        """Forget the `n` oldest keys of a team."""
        ids = self._ids
        chunks = share.chunks
        while n > 0 and chunks:
            front = chunks[0]
            take = 0
            if front.first < front.end:
                take = min(n, front.end - front.first)
                front.first += take
                self._left -= take
            else:
                take = min(n, len(front.ids))
                for text in itertools.islice(front.ids, take):
                    ids.discard(text)
                del front.ids[:take]
            n -= take
            share.count -= take
            self._count -= take
            if not front.size():
                chunks.popleft()
                self._emptied += 1
        if share.count <= 0:
            del self._teams[share.team]
        if self._emptied > 64 + len(self._chunks) // 2:
            # Chunks emptied behind others (a team's, forgotten by count) are dropped here
            # rather than one by one from the middle of the queue.
            self._chunks = deque(c for c in self._chunks if c.size())
            self._emptied = 0
        if self._old is not None and self._left <= 0:
            self._drop_old()

    def _drop_old(self) -> None:
        self._old = None
        self._old_chunks = []
        self._left = 0

    def settle(self, step: int = STEP) -> Iterator[int]:
        """Turn the restored keys into live ones a chunk at a time, yielding the number done
        after each slice of about `step`, so that lookups stop paying for the compact form (a
        hash and a probe for every key the live set lacks). Callers see no change: each chunk
        turns whole between two slices. A restore meanwhile abandons it."""
        old = self._old
        if old is None:
            return
        done = 0
        since = 0
        for c in list(self._old_chunks):
            if self._old is not old:
                return
            if c.first < c.end:
                texts = [old.entry(i) for i in range(c.first, c.end)]
                self._ids.update(texts)
                texts.extend(c.ids)  # none: a restored chunk is closed
                c.ids = texts
                self._left -= c.end - c.first
                done += c.end - c.first
                since += c.end - c.first
                c.first = c.end = 0
            if since >= step:
                since = 0
                yield done
        if self._old is old:
            self._drop_old()
        yield done

    def _all_chunks(self) -> Iterator[tuple[str, list[str], float]]:
        old = self._old
        for c in self._chunks:
            if not c.size():
                continue
            if c.first < c.end:
                assert old is not None
                texts = [old.entry(i) for i in range(c.first, c.end)]
                yield c.team, texts + c.ids, c.max_time
            else:
                yield c.team, c.ids, c.max_time

    def chunks(self) -> list[tuple[str, list[str], float]]:
        """A copy of the keys in chunks, oldest first, each with its team and the latest time
        one of them was received (taken at once, so later changes do not show)."""
        return [(team, list(ids), t) for team, ids, t in self._all_chunks()]

    def restore(self, chunks: Iterable[tuple[str, Sequence[str], float]] | Remembered) -> None:
        """Replace the contents with those of a snapshot: its compact form as it is, or chunks
        of keys (team, keys, time received), oldest first. Restored chunks take no more keys."""
        self._ids = set()
        self._chunks = deque()
        self._emptied = 0
        self._teams = {}
        self._count = 0
        self._drop_old()
        newest = float("-inf")
        if isinstance(chunks, Remembered):
            start = 0
            made: list[_Chunk] = []
            for team, end, t in zip(chunks.teams, chunks.ends, chunks.times, strict=True):
                c = _Chunk(team, [], t, True, start, end)
                made.append(c)
                if end > start:
                    self._place(c, end - start)
                    newest = max(newest, t)
                start = end
            if len(chunks):
                self._old = chunks
                self._old_chunks = made
                self._left = len(chunks)
        else:
            for team, texts, t in chunks:
                if texts:
                    self._ids.update(texts)
                    self._place(_Chunk(team, list(texts), t, True), len(texts))
                    newest = max(newest, t)
        self.newest = newest
        if self._count > self.capacity:
            self._shed(self._count - self.capacity)

    def _place(self, c: _Chunk, size: int) -> None:
        share = self._teams.get(c.team)
        if share is None:
            share = self._teams[c.team] = _Team(c.team)
        share.chunks.append(c)
        share.count += size
        self._count += size
        self._chunks.append(c)


class ImageBuilder:
    """The compact form (Remembered) of the keys a SeenExecutions holds at one moment, built a
    slice at a time so that a snapshot can let ingestion in between slices.

    What it covers is taken at construction: the restored generation is read only and only
    referred to; the live chunks are copied."""

    def __init__(self, seen: SeenExecutions) -> None:
        self._old = seen.restored
        self._parts = [
            (c.team, c.max_time, c.first, c.end, list(c.ids)) for c in seen._chunks if c.size()
        ]
        self.result = _empty()

    def steps(self, step: int = STEP) -> Iterator[int]:
        """Do the work, yielding the number of keys done after each slice; `result` is the form
        once the iterator is exhausted."""
        starts = array("Q", [0])
        hashes = array("I")
        ends: list[int] = []
        times: list[float] = []
        teams: list[str] = []
        buffer = bytearray()
        old = self._old
        offset = 0
        done = 0
        mark = step
        for team, max_time, first, end, ids in self._parts:
            if first < end and old is not None:  # restored entries: their bytes as they are
                base = old.base
                at = old.starts[first]
                buffer += memoryview(old.blob)[at - base : old.starts[end] - base]
                shift = offset - at
                starts.extend(array("Q", [s + shift for s in old.starts[first + 1 : end + 1]]))
                hashes.extend(old.hashes[first:end])
                offset = starts[len(starts) - 1]
                done += end - first
            for text in ids:
                data = text.encode()
                buffer += data
                hashes.append(_hash(data))
                offset += len(data)
                starts.append(offset)
                done += 1
            ends.append(done)
            times.append(max_time)
            teams.append(team)
            if done >= mark:
                mark = done + step
                yield done
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
        image = Remembered(blob, starts, hashes, table, overflow, ends, times, teams)
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
