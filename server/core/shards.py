"""Sharded in-memory state: per-pipeline aggregates, ring buffers of recent runs, team totals.

Pipelines are spread over shards by a stable hash of their id (CRC-32, never Python's salted
`hash()`), so a pipeline lands in the same shard on every run and on every node. Each shard owns
its pipelines and its share of every team's totals; team metrics are the sum of the shards'
shares, kept incrementally, so no read scans the pipelines. Everything here is pure: no I/O, no
waiting.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator, Sequence

from sortedcontainers import SortedList

from pipewarden.server.core.model import CANCELLED, FAILED, SUCCEEDED, Execution
from pipewarden.storage.v1 import storage_pb2

__all__ = [
    "MAX_IN_FLIGHT",
    "PipelineState",
    "Ring",
    "Shard",
    "ShardSet",
    "SnapshotJob",
    "TeamTotals",
    "dump_pipeline",
    "encode_pipeline",
    "encode_shard_part",
    "shard_of",
]

MAX_IN_FLIGHT = 8
"""Runs remembered as in flight per pipeline; the oldest is forgotten beyond that. Each costs
its execution id (up to 1 KiB): 8 keep a pipeline within its memory budget
(server.config.PIPELINE_MEMORY_BUDGET)."""


def shard_of(pipeline_id: str, shards: int) -> int:
    """The shard that owns `pipeline_id`: stable across processes and releases."""
    return zlib.crc32(pipeline_id.encode()) % shards


class Ring:
    """A fixed-size ring buffer of recent terminal runs, in packed arrays (about 25 bytes a run).

    Preallocated at full size, so a pipeline's memory does not grow with its history.
    """

    __slots__ = ("count", "duration", "position", "records", "status", "time")

    def __init__(self, size: int) -> None:
        self.status = array("b", bytes(size))
        self.duration = array("d", bytes(8 * size))
        self.records = array("q", bytes(8 * size))
        self.time = array("d", bytes(8 * size))
        self.position = 0
        self.count = 0

    def push(self, status: int, duration: float | None, records: int, time: float) -> None:
        """Record one run, overwriting the oldest when full."""
        i = self.position
        self.status[i] = status
        self.duration[i] = math.nan if duration is None else duration
        self.records[i] = records
        self.time[i] = time
        size = len(self.status)
        self.position = i + 1 if i + 1 < size else 0
        if self.count < size:
            self.count += 1

    def indices(self) -> Iterator[int]:
        """Slots in use, oldest first."""
        size = len(self.status)
        start = (self.position - self.count) % size
        for k in range(self.count):
            yield (start + k) % size

    def runs(self) -> list[tuple[int, float | None, int, float]]:
        """The runs, oldest first: (status, duration or None, records, time)."""
        out: list[tuple[int, float | None, int, float]] = []
        for i in self.indices():
            d = self.duration[i]
            out.append(
                (self.status[i], None if math.isnan(d) else d, self.records[i], self.time[i])
            )
        return out


class PipelineState:
    """Everything kept about one pipeline."""

    __slots__ = (
        "cancelled",
        "changed",
        "consecutive_failures",
        "duration_count",
        "duration_sum",
        "epoch",
        "failed",
        "in_flight",
        "judged_failures",
        "labels",
        "last_error",
        "last_received",
        "last_status",
        "last_success_time",
        "last_time",
        "peak_failures",
        "pipeline_id",
        "profile",
        "profile_at",
        "records_sum",
        "ring",
        "shard",
        "succeeded",
        "team",
        "totals",
        "upstream",
    )

    def __init__(
        self, pipeline_id: str, team: str, window: int, shard: int, totals: TeamTotals
    ) -> None:
        self.pipeline_id = pipeline_id
        self.team = team
        self.shard = shard
        """Index of the shard that owns it."""
        self.totals = totals
        """That shard's share of the team's totals, which this pipeline's runs add to."""
        self.succeeded = 0
        self.failed = 0
        self.cancelled = 0
        self.duration_sum = 0.0
        self.duration_count = 0
        self.records_sum = 0
        self.last_time: float | None = None
        self.last_received: float | None = None
        """When the server received its latest event (Unix seconds, server clock): a pipeline
        whose runs keep arriving is not stale, even if their event times are old (a backfill,
        an import of history)."""
        self.last_status = 0
        self.consecutive_failures = 0
        self.peak_failures = 0
        """The longest failure streak since the streak was last judged: a streak that grows
        past a threshold and ends before anyone looks (in one request, or between two
        detection passes) is still judged at its peak."""
        self.judged_failures = 0
        """The failure streak as detection last judged it; above it, `peak_failures` tells
        which thresholds the streak has crossed since."""
        self.last_error = ""
        self.last_success_time: float | None = None
        self.in_flight: dict[str, float] | None = None
        self.upstream: tuple[str, ...] = ()
        self.labels: dict[str, str] | None = None
        self.ring = Ring(window)
        self.profile: array[float] | None = None
        """Its weekly profile, learned by detection (see server.detection.profile)."""
        self.profile_at = 0
        """How many of its runs the profile has seen (by count of runs, not time)."""
        self.epoch = 0
        """The last snapshot that has this pipeline's state (see SnapshotJob)."""
        self.changed = True
        """Changed since the last snapshot began: a delta snapshot holds only these."""

    def streak_judged(self) -> None:
        """Mark the failure streak as judged where it stands: thresholds count as crossed
        again only from here."""
        self.peak_failures = self.judged_failures = self.consecutive_failures

    @property
    def total(self) -> int:
        """Counted executions."""
        return self.succeeded + self.failed + self.cancelled

    @property
    def success_rate(self) -> float:
        """succeeded / (succeeded + failed), 0 when there are none."""
        judged = self.succeeded + self.failed
        return self.succeeded / judged if judged else 0.0

    @property
    def avg_duration(self) -> float:
        """Mean known duration of succeeded and failed executions, seconds."""
        return self.duration_sum / self.duration_count if self.duration_count else 0.0

    @property
    def avg_records(self) -> float:
        """Mean records of succeeded and failed executions."""
        judged = self.succeeded + self.failed
        return self.records_sum / judged if judged else 0.0

    def recent_success_rate(self) -> tuple[float, int]:
        """Success rate over the ring buffer, and how many runs it holds."""
        ok = bad = 0
        status = self.ring.status
        for i in self.ring.indices():
            s = status[i]
            if s == SUCCEEDED:
                ok += 1
            elif s == FAILED:
                bad += 1
        return (ok / (ok + bad) if ok + bad else 0.0), self.ring.count


class TeamTotals:
    """One shard's share of one team's totals."""

    __slots__ = (
        "cancelled",
        "duration_count",
        "duration_sum",
        "failed",
        "failing",
        "pipelines",
        "records_sum",
        "succeeded",
    )

    def __init__(self) -> None:
        self.pipelines = 0
        self.succeeded = 0
        self.failed = 0
        self.cancelled = 0
        self.duration_sum = 0.0
        self.duration_count = 0
        self.records_sum = 0
        self.failing = 0

    def add(self, other: TeamTotals) -> None:
        """Add another share into this one."""
        self.pipelines += other.pipelines
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.duration_sum += other.duration_sum
        self.duration_count += other.duration_count
        self.records_sum += other.records_sum
        self.failing += other.failing


class Shard:
    """The pipelines whose id hashes to one index, and their teams' totals."""

    __slots__ = ("index", "pipelines", "teams", "window")

    def __init__(self, index: int, window: int) -> None:
        self.index = index
        self.window = window
        self.pipelines: dict[str, PipelineState] = {}
        self.teams: dict[str, TeamTotals] = {}

    def create(self, pipeline_id: str, team: str) -> PipelineState:
        """Add a new pipeline."""
        team = sys.intern(team)
        totals = self.teams.get(team)
        if totals is None:
            totals = self.teams[team] = TeamTotals()
        totals.pipelines += 1
        state = PipelineState(pipeline_id, team, self.window, self.index, totals)
        self.pipelines[pipeline_id] = state
        return state

    @staticmethod
    def apply_terminal(state: PipelineState, e: Execution) -> None:
        """Count one terminal execution of `state`'s pipeline (already known to be new)."""
        totals = state.totals
        status = e.status
        t = e.event_time
        state.changed = True
        if state.in_flight is not None:
            state.in_flight.pop(e.execution_id, None)
            if not state.in_flight:
                state.in_flight = None
        if e.upstream:
            state.upstream = e.upstream
        if e.labels and (state.labels is None or state.ring.position == 0):
            # Labels change rarely: they are taken from the first run that has them and
            # refreshed once per turn of the ring buffer, not copied on every run.
            state.labels = dict(e.labels)
        # Ring.push, inlined: this runs for every counted execution.
        ring = state.ring
        i = ring.position
        ring.status[i] = status
        ring.duration[i] = math.nan if e.duration is None else e.duration
        ring.records[i] = e.records
        ring.time[i] = t
        size = len(ring.status)
        ring.position = i + 1 if i + 1 < size else 0
        if ring.count < size:
            ring.count += 1
        if status == CANCELLED:
            state.cancelled += 1
            totals.cancelled += 1
        else:
            if status == SUCCEEDED:
                state.succeeded += 1
                totals.succeeded += 1
                last_success = state.last_success_time
                if last_success is None or t >= last_success:
                    state.last_success_time = t
                    if state.last_time is None or t >= state.last_time:
                        state.consecutive_failures = 0
                    else:
                        # A late success: only the failures after it (by event time) still count.
                        state.consecutive_failures = Shard._failures_after(state, t)
            else:
                state.failed += 1
                totals.failed += 1
                state.last_error = e.error_message
                last_success = state.last_success_time
                if last_success is None or t >= last_success:
                    state.consecutive_failures += 1
                    if state.consecutive_failures > state.peak_failures:
                        state.peak_failures = state.consecutive_failures
            duration = e.duration
            if duration is not None:
                state.duration_sum += duration
                state.duration_count += 1
                totals.duration_sum += duration
                totals.duration_count += 1
            state.records_sum += e.records
            totals.records_sum += e.records
        if state.last_time is None or t >= state.last_time:
            was_failing = state.last_status == FAILED
            state.last_time = t
            state.last_status = status
            is_failing = status == FAILED
            if was_failing != is_failing:
                totals.failing += 1 if is_failing else -1

    @staticmethod
    def _failures_after(state: PipelineState, t: float) -> int:
        ring = state.ring
        return sum(1 for i in ring.indices() if ring.status[i] == FAILED and ring.time[i] > t)

    @staticmethod
    def apply_running(state: PipelineState, e: Execution) -> None:
        """Mark one execution of `state`'s pipeline as in flight."""
        state.changed = True
        if state.in_flight is None:
            state.in_flight = {}
        elif len(state.in_flight) >= MAX_IN_FLIGHT and e.execution_id not in state.in_flight:
            state.in_flight.pop(next(iter(state.in_flight)))
        state.in_flight[e.execution_id] = e.event_time

    # -- snapshots ---------------------------------------------------------------------------

    def dump(self) -> storage_pb2.ShardSnapshot:
        """The whole shard as a snapshot message."""
        snap = self.dump_teams()
        snap.pipelines.extend(dump_pipeline(p) for p in self.pipelines.values())
        return snap

    def dump_teams(self) -> storage_pb2.ShardSnapshot:
        """The shard's team totals as a snapshot message (without its pipelines)."""
        snap = storage_pb2.ShardSnapshot(index=self.index)
        for team, t in self.teams.items():
            snap.teams.add(
                team=team,
                pipelines=t.pipelines,
                succeeded=t.succeeded,
                failed=t.failed,
                cancelled=t.cancelled,
                duration_sum=t.duration_sum,
                duration_count=t.duration_count,
                records_sum=str(t.records_sum),
                failing=t.failing,
            )
        return snap

    @classmethod
    def restore(
        cls,
        snap: storage_pb2.ShardSnapshot,
        window: int,
        newer: Sequence[storage_pb2.ShardSnapshot] = (),
    ) -> Shard:
        """A shard from its snapshot. A ring of another size is refilled into `window` slots.

        `newer` is the same shard in the delta snapshots written after `snap`, oldest first:
        the last one's team totals replace `snap`'s, and the latest state of each pipeline
        wins (in the order the pipelines were first written, as they were made)."""
        shard = cls(snap.index, window)
        for t in (newer[-1] if newer else snap).teams:
            totals = shard.teams[t.team] = TeamTotals()
            totals.pipelines = t.pipelines
            totals.succeeded = t.succeeded
            totals.failed = t.failed
            totals.cancelled = t.cancelled
            totals.duration_sum = t.duration_sum
            totals.duration_count = t.duration_count
            totals.records_sum = int(t.records_sum or "0")
            totals.failing = t.failing
        if newer:
            latest: dict[str, storage_pb2.PipelineSnapshot] = {}
            for part in newer:
                for msg in part.pipelines:
                    latest[msg.pipeline_id] = msg
            for msg in snap.pipelines:
                shard._restore_pipeline(latest.pop(msg.pipeline_id, msg), window)
            for msg in latest.values():
                shard._restore_pipeline(msg, window)
        else:
            for msg in snap.pipelines:
                shard._restore_pipeline(msg, window)
        return shard

    def _restore_pipeline(self, msg: storage_pb2.PipelineSnapshot, window: int) -> None:
        team = sys.intern(msg.team)
        team_totals = self.teams.get(team)
        if team_totals is None:
            team_totals = self.teams[team] = TeamTotals()
        # A ring of size 0 for now: _restore_ring puts the saved arrays in place.
        p = PipelineState(msg.pipeline_id, team, 0, self.index, team_totals)
        p.changed = False
        p.succeeded = msg.succeeded
        p.failed = msg.failed
        p.cancelled = msg.cancelled
        p.duration_sum = msg.duration_sum
        p.duration_count = msg.duration_count
        p.records_sum = int(msg.records_sum or "0")
        p.last_time = msg.last_time if msg.HasField("last_time") else None
        p.last_received = msg.last_received if msg.HasField("last_received") else None
        p.last_status = msg.last_status
        p.consecutive_failures = msg.consecutive_failures
        # Judged by the first detection pass after recovery; the alerts logged after the
        # snapshot mark again what was judged before the stop (see server.recovery).
        p.peak_failures = p.judged_failures = msg.consecutive_failures
        p.last_error = msg.last_error
        p.last_success_time = msg.last_success_time if msg.HasField("last_success_time") else None
        p.in_flight = dict(msg.in_flight) if msg.in_flight else None
        p.upstream = tuple(msg.upstream)
        p.labels = dict(msg.labels) if msg.labels else None
        _restore_ring(p, msg.ring, window)
        if msg.profile:
            p.profile = array("f", msg.profile)
        p.profile_at = msg.profile_at
        self.pipelines[p.pipeline_id] = p


def dump_pipeline(p: PipelineState) -> storage_pb2.PipelineSnapshot:
    """One pipeline's whole state as a snapshot message."""
    msg = storage_pb2.PipelineSnapshot(
        pipeline_id=p.pipeline_id,
        team=p.team,
        succeeded=p.succeeded,
        failed=p.failed,
        cancelled=p.cancelled,
        duration_sum=p.duration_sum,
        duration_count=p.duration_count,
        records_sum=str(p.records_sum),
        last_status=p.last_status,
        consecutive_failures=p.consecutive_failures,
        last_error=p.last_error,
        upstream=p.upstream,
        ring=_dump_ring(p.ring),
    )
    if p.last_time is not None:
        msg.last_time = p.last_time
    if p.last_received is not None:
        msg.last_received = p.last_received
    if p.last_success_time is not None:
        msg.last_success_time = p.last_success_time
    if p.in_flight:
        msg.in_flight.update(p.in_flight)
    if p.labels:
        msg.labels.update(p.labels)
    if p.profile is not None:
        msg.profile = p.profile.tobytes()
    msg.profile_at = p.profile_at
    return msg


_DOUBLE = struct.Struct("<d")


def _varint(out: bytearray, n: int) -> None:
    if n < 0:
        n += 1 << 64  # int64 and int32 alike: ten bytes, two's complement
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _bytes_field(out: bytearray, tag: int, data: bytes) -> None:
    out.append(tag)
    _varint(out, len(data))
    out += data


def _text_field(out: bytearray, tag: int, text: str) -> None:
    _bytes_field(out, tag, text.encode())


def _set(x: float) -> bool:
    """Whether protobuf writes the double `x` in a field without presence: -0.0 it does."""
    return x != 0.0 or math.copysign(1.0, x) < 0


def _int_field(out: bytearray, tag: int, n: int) -> None:
    if n:
        out.append(tag)
        _varint(out, n)


def encode_pipeline(p: PipelineState) -> bytes:
    """dump_pipeline's message in the protobuf wire format, encoded here (several times faster
    than building the message: a snapshot of a large fleet spends its time on this)."""
    out = bytearray()
    _text_field(out, 0x0A, p.pipeline_id)  # 1
    if p.team:
        _text_field(out, 0x12, p.team)  # 2
    _int_field(out, 0x18, p.succeeded)  # 3
    _int_field(out, 0x20, p.failed)  # 4
    _int_field(out, 0x28, p.cancelled)  # 5
    if _set(p.duration_sum):
        out.append(0x31)  # 6
        out += _DOUBLE.pack(p.duration_sum)
    _int_field(out, 0x38, p.duration_count)  # 7
    _text_field(out, 0x42, str(p.records_sum))  # 8
    if p.last_time is not None:
        out.append(0x49)  # 9
        out += _DOUBLE.pack(p.last_time)
    _int_field(out, 0x50, p.last_status)  # 10
    _int_field(out, 0x58, p.consecutive_failures)  # 11
    if p.last_error:
        _text_field(out, 0x62, p.last_error)  # 12
    if p.last_success_time is not None:
        out.append(0x69)  # 13
        out += _DOUBLE.pack(p.last_success_time)
    if p.in_flight:
        for eid, t in p.in_flight.items():  # 14: entries of key 1, value 2
            entry = bytearray()
            _text_field(entry, 0x0A, eid)
            if _set(t):
                entry.append(0x11)
                entry += _DOUBLE.pack(t)
            _bytes_field(out, 0x72, bytes(entry))
    for up in p.upstream:
        _text_field(out, 0x7A, up)  # 15
    if p.labels:
        for k, v in p.labels.items():  # 16 (two-byte tag)
            entry = bytearray()
            _text_field(entry, 0x0A, k)
            if v:
                _text_field(entry, 0x12, v)
            out += b"\x82\x01"
            _varint(out, len(entry))
            out += entry
    ring = bytearray()
    _encode_ring(ring, p.ring)
    out += b"\x8a\x01"  # 17
    _varint(out, len(ring))
    out += ring
    if p.profile is not None and len(p.profile):
        out += b"\x92\x01"  # 18
        data = p.profile.tobytes()
        _varint(out, len(data))
        out += data
    if p.profile_at:
        out += b"\x98\x01"  # 19
        _varint(out, p.profile_at)
    if p.last_received is not None:
        out += b"\xa1\x01"  # 20
        out += _DOUBLE.pack(p.last_received)
    return bytes(out)


def _encode_ring(out: bytearray, ring: Ring) -> None:
    """_dump_ring's message in the wire format."""
    size = len(ring.status)
    count = ring.count
    position = ring.position
    used = size
    if count < size and position == count:
        used = max(count, 1)
        position = 0
    _int_field(out, 0x08, size)
    _int_field(out, 0x10, position)
    _int_field(out, 0x18, count)
    if used == size:
        if size:
            _bytes_field(out, 0x22, ring.status.tobytes())
            _bytes_field(out, 0x2A, ring.duration.tobytes())
            _bytes_field(out, 0x32, ring.records.tobytes())
            _bytes_field(out, 0x3A, ring.time.tobytes())
    else:
        _bytes_field(out, 0x22, ring.status[:used].tobytes())
        _bytes_field(out, 0x2A, ring.duration[:used].tobytes())
        _bytes_field(out, 0x32, ring.records[:used].tobytes())
        _bytes_field(out, 0x3A, ring.time[:used].tobytes())


def encode_shard_part(index: int, pipelines: list[bytes]) -> bytes:
    """A ShardSnapshot of the shard `index` and the encoded `pipelines`, in the wire format."""
    out = bytearray()
    _int_field(out, 0x08, index)
    for data in pipelines:
        _bytes_field(out, 0x12, data)
    return bytes(out)


def _dump_ring(ring: Ring) -> storage_pb2.RingSnapshot:
    """A ring as a snapshot message. A ring not yet full is written as its slots in use (the
    first `count`, oldest first) and read back into its size: a new pipeline's run costs 25
    bytes, not its whole preallocated ring. A reader that knows nothing of this takes it as a
    full ring of `count` slots, refilled into its window: the same runs in the same order."""
    size = len(ring.status)
    count = ring.count
    if count < size and ring.position == count:
        used = max(count, 1)  # a ring of no slot would be a division by zero in Ring.indices
        return storage_pb2.RingSnapshot(
            size=size,
            position=0,
            count=count,
            status=ring.status[:used].tobytes(),
            duration=ring.duration[:used].tobytes(),
            records=ring.records[:used].tobytes(),
            time=ring.time[:used].tobytes(),
        )
    return storage_pb2.RingSnapshot(
        size=size,
        position=ring.position,
        count=count,
        status=ring.status.tobytes(),
        duration=ring.duration.tobytes(),
        records=ring.records.tobytes(),
        time=ring.time.tobytes(),
    )


def _restore_ring(p: PipelineState, msg: storage_pb2.RingSnapshot, window: int) -> None:
    saved = p.ring  # the empty ring the pipeline was made with: filled, not made again
    saved.status = array("b", msg.status)
    saved.duration = array("d", msg.duration)
    saved.records = array("q", msg.records)
    saved.time = array("d", msg.time)
    saved.position, saved.count = msg.position, msg.count
    used = len(saved.status)
    if used == window:
        p.ring = saved
        return
    if msg.size == window and used < window and msg.position == 0 and msg.count <= used:
        # The slots in use of a ring not yet full (see _dump_ring): padded to its size.
        pad = window - used
        saved.status.frombytes(bytes(pad))
        saved.duration.frombytes(bytes(8 * pad))
        saved.records.frombytes(bytes(8 * pad))
        saved.time.frombytes(bytes(8 * pad))
        saved.position = msg.count
        p.ring = saved
        return
    # Another window size since the snapshot: keep the latest runs that fit.
    p.ring = Ring(window)
    for status, duration, records, time in saved.runs():
        p.ring.push(status, duration, records, time)


class SnapshotJob:
    """A consistent snapshot taken while ingestion goes on: copy-on-write, pipeline by pipeline.

    At the start the team totals are copied and the pipelines listed (all of them, or for a
    delta only those changed since the last snapshot began); the writer then dumps the listed
    pipelines a chunk at a time, yielding to the event loop in between. A pipeline about to
    change before its turn is dumped first (`preserve`), so every pipeline is written as it was
    at the start. Pipelines created later are not in the snapshot (the log has them).
    """

    def __init__(self, epoch: int, shards: list[Shard], *, full: bool = True) -> None:
        self.epoch = epoch
        self.full = full
        """Every pipeline, or (a delta) only those changed since the last snapshot began."""
        self.teams = [shard.dump_teams() for shard in shards]
        self._listed: list[tuple[int, list[PipelineState]]] = []
        for shard in shards:
            listed: list[PipelineState] = []
            for state in shard.pipelines.values():
                if full or state.changed:
                    state.changed = False
                    listed.append(state)
                else:
                    state.epoch = epoch  # already in the snapshots, as it is now
            self._listed.append((shard.index, listed))
        self.listed = sum(len(states) for _, states in self._listed)
        """How many pipelines the snapshot holds."""
        self._preserved: list[tuple[int, bytes]] = []

    def abandon(self) -> int:
        """The snapshot was not written: mark its pipelines changed again, so that the next
        delta holds them; return how many were not marked already."""
        count = 0
        for _, states in self._listed:
            for state in states:
                if not state.changed:
                    state.changed = True
                    count += 1
        return count

    def preserve(self, shard_index: int, state: PipelineState) -> None:
        """Dump `state` now, before it changes, unless it is already in the snapshot."""
        if state.epoch != self.epoch:
            state.epoch = self.epoch
            self._preserved.append((shard_index, encode_pipeline(state)))

    def chunks(self, size: int) -> Iterator[tuple[int, list[bytes]]]:
        """(shard index, up to `size` pipelines, each a PipelineSnapshot encoded) until every
        listed pipeline is out."""
        for index, states in self._listed:
            batch: list[bytes] = []
            for state in states:
                if state.epoch != self.epoch:
                    state.epoch = self.epoch
                    batch.append(encode_pipeline(state))
                    if len(batch) >= size:
                        yield index, batch
                        batch = []
                if self._preserved:
                    yield from self._drain()
            if batch:
                yield index, batch
        yield from self._drain()

    def _drain(self) -> Iterator[tuple[int, list[bytes]]]:
        preserved, self._preserved = self._preserved, []
        for index, msg in preserved:
            yield index, [msg]


class ShardSet:
    """All shards, the sorted index of pipeline ids that paging reads, and team lookups."""

    def __init__(self, shards: int, window: int) -> None:
        self.window = window
        self.shards = [Shard(i, window) for i in range(shards)]
        # Sorted lists made for inserts (sortedcontainers: a list of sorted sublists), so that
        # a new pipeline costs O(log n) and not a shift of every id after it (bisect.insort on
        # a list: O(n), and O(n²) for a fleet).
        self._sorted: SortedList[str] = SortedList()
        self._sorted_by_team: dict[str, SortedList[str]] = {}
        self.index: dict[str, PipelineState] = {}
        """Every pipeline by id, across shards: one lookup on the hot path."""
        self.job: SnapshotJob | None = None
        """The snapshot being written, if any; writers call job.preserve before a change."""
        self.last_job: SnapshotJob | None = None
        """The snapshot begun last (being written, written or abandoned)."""
        self._epoch = 0
        self.changed = 0
        """Pipelines changed since the last snapshot began (as ingestion counts them)."""
        self.full_next = True
        """Whether the next snapshot must hold every pipeline: there is none yet to build
        a delta on (or the pipelines were re-spread over another number of shards)."""

    def begin_snapshot(self, *, full: bool = True) -> SnapshotJob:
        """Start a snapshot of the state as it is now: of every pipeline, or (`full` False)
        a delta of those changed since the last snapshot began."""
        assert self.job is None, "one snapshot at a time"
        self._epoch += 1
        self.job = self.last_job = SnapshotJob(
            self._epoch, self.shards, full=full or self.full_next
        )
        self.full_next = False
        self.changed = 0
        return self.job

    def end_snapshot(self) -> None:
        """The snapshot is written (or abandoned)."""
        self.job = None

    def abandon_snapshot(self, job: SnapshotJob) -> None:
        """`job` was not written (it failed, or was cancelled): what it held counts as
        changed again. After a whole one, the next snapshot must be whole."""
        self.changed += job.abandon()
        if job.full:
            self.full_next = True

    def __len__(self) -> int:
        return len(self._sorted)

    def shard_for(self, pipeline_id: str) -> Shard:
        """The shard that owns `pipeline_id`."""
        return self.shards[zlib.crc32(pipeline_id.encode()) % len(self.shards)]

    def get(self, pipeline_id: str) -> PipelineState | None:
        """A pipeline's state, or None when it has never been seen."""
        return self.index.get(pipeline_id)

    def create(self, pipeline_id: str, team: str) -> PipelineState:
        """Add a pipeline to its shard and to the indexes."""
        state = self.shard_for(pipeline_id).create(pipeline_id, team)
        self.index[pipeline_id] = state
        self.changed += 1
        if self.job is not None:
            state.epoch = self.job.epoch
        self._sorted.add(pipeline_id)
        by_team = self._sorted_by_team.get(state.team)
        if by_team is None:
            by_team = self._sorted_by_team[state.team] = SortedList()
        by_team.add(pipeline_id)
        return state

    def page(self, team: str, after: str, size: int) -> tuple[list[PipelineState], bool]:
        """Up to `size` pipelines with ids after `after`, in id order; and whether more follow."""
        ids = self._sorted_by_team.get(team) if team else self._sorted
        if ids is None:
            return [], False
        start = ids.bisect_right(after) if after else 0
        more = start + size < len(ids)
        states = []
        for pid in ids.islice(start, start + size):
            state = self.get(pid)
            assert state is not None
            states.append(state)
        return states, more

    def team_pipeline_count(self, team: str) -> int:
        """How many pipelines `team` has."""
        return len(self._sorted_by_team.get(team, ()))

    def teams(self) -> list[str]:
        """Every team, sorted."""
        return sorted(self._sorted_by_team)

    def team_totals(self, team: str) -> TeamTotals | None:
        """One team's totals summed over the shards, or None for an unknown team."""
        if team not in self._sorted_by_team:
            return None
        total = TeamTotals()
        for shard in self.shards:
            part = shard.teams.get(team)
            if part is not None:
                total.add(part)
        return total

    def pipelines(self) -> Iterator[PipelineState]:
        """Every pipeline, shard by shard."""
        for shard in self.shards:
            yield from shard.pipelines.values()

    def dump(self) -> list[storage_pb2.ShardSnapshot]:
        """Every shard as a snapshot message."""
        return [shard.dump() for shard in self.shards]

    def restore(
        self,
        snaps: list[storage_pb2.ShardSnapshot],
        deltas: Sequence[list[storage_pb2.ShardSnapshot]] = (),
    ) -> None:
        """Replace all state with the snapshots': a whole one, then the deltas written after
        it, oldest first (each the shards of one delta, by index, as `snaps`). Pipelines are
        re-spread if the shard count changed since the snapshots were taken."""

        def newer(index: int) -> list[storage_pb2.ShardSnapshot]:
            return [delta[index] for delta in deltas if index < len(delta)]

        same = len(snaps) == len(self.shards) and all(s.index == i for i, s in enumerate(snaps))
        self.full_next = not same
        if same:
            self.shards = [Shard.restore(s, self.window, newer(i)) for i, s in enumerate(snaps)]
        else:
            self.shards = [Shard(i, self.window) for i in range(len(self.shards))]
            for i, snap in enumerate(snaps):
                old = Shard.restore(snap, self.window, newer(i))
                for pid, state in old.pipelines.items():
                    shard = self.shard_for(pid)
                    shard.pipelines[pid] = state
                    state.shard = shard.index
                    state.totals = _add_to_totals(shard, state)
        self.index = {p.pipeline_id: p for p in self.pipelines()}
        ids = sorted(self.index)
        by_team: dict[str, list[str]] = {}
        index = self.index
        for pid in ids:
            by_team.setdefault(index[pid].team, []).append(pid)
        self._sorted = SortedList(ids)
        self._sorted_by_team = {team: SortedList(part) for team, part in by_team.items()}


def _add_to_totals(shard: Shard, p: PipelineState) -> TeamTotals:
    totals = shard.teams.get(p.team)
    if totals is None:
        totals = shard.teams[p.team] = TeamTotals()
    totals.pipelines += 1
    totals.succeeded += p.succeeded
    totals.failed += p.failed
    totals.cancelled += p.cancelled
    totals.duration_sum += p.duration_sum
    totals.duration_count += p.duration_count
    totals.records_sum += p.records_sum
    totals.failing += 1 if p.last_status == FAILED else 0
    return totals
