"""Ingestion: decide what each execution event does, apply it, and log it in one step.

For each request: validate every event, drop duplicates, apply the rest to the shards and append
one log record, all without yielding to the event loop, so the log's order is the order in which
state changed and replaying it rebuilds the same state. The caller acknowledges the request only
once the log says that record (and everything before it) is durable.

The log record keeps the request's bytes as the client sent them, with a mask of the applied
events, so logging costs no re-encoding.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipewarden.server.base import metrics
from pipewarden.server.base.logsafe import safe
from pipewarden.server.core.dedup import SeenExecutions, key, legacy_key
from pipewarden.server.core.detect import AlertSink, Detector, NullDetector, NullSink
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.model import RUNNING, Execution
from pipewarden.server.core.shards import PipelineState, Shard, ShardSet
from pipewarden.server.core.validation import convert
from pipewarden.server.core.wire import decode_rows
from pipewarden.server.storage.eventlog import EventLog
from pipewarden.storage.v1 import storage_pb2
from pipewarden.v1 import service_pb2

__all__ = ["IngestOutcome", "Ingestor", "Row", "from_row", "logged_batch", "row"]

log = logging.getLogger(__name__)

_ACCEPTED, _DUPLICATE, _RUNNING, _LATE_RUNNING = 1, 2, 3, 4
# Verdicts to the log's mask: 1 for what changed state (accepted and RUNNING events).
_APPLIED = bytes(1 if v in (_ACCEPTED, _RUNNING) else 0 for v in range(256))


@dataclass(slots=True)
class IngestOutcome:
    """What became of one request's events."""

    accepted: int = 0
    duplicates: int = 0
    running: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    """(index, execution_id, reason) of each refused event."""


class Ingestor:
    """Owns the path from a decoded request to changed state and a log record."""

    def __init__(
        self,
        shards: ShardSet,
        seen: SeenExecutions,
        log: EventLog,
        limits: IngestLimits,
        *,
        detector: Detector | None = None,
        sink: AlertSink | None = None,
        clock: Callable[[], float] = time.time,
        defer_detection: bool = False,
    ) -> None:
        self.shards = shards
        self.seen = seen
        self.log = log
        self.limits = limits
        self.detector: Detector = detector if detector is not None else NullDetector()
        self.sink: AlertSink = sink if sink is not None else NullSink()
        self.clock = clock
        self._detect = detector is not None
        self.defer_detection = defer_detection
        """When set, touched pipelines wait in `pending` until `take_pending` (the partition's
        detection loop), so a pipeline that runs many times in a moment is evaluated once, and
        detection slows the answer to an ingest request only for the few pipelines whose failure
        streak just crossed an alerting length (`urgent`)."""
        self.pending: dict[str, PipelineState] = {}
        self.urgent: list[PipelineState] = []
        """With deferred detection, the pipelines the detector found `urgent` in the requests
        since `take_urgent` (a failure streak that crossed an alerting length, even if it ended
        in the same request too): not pending, since the caller judges them at once."""

    def ingest(
        self, raw: bytes, request: service_pb2.IngestRequest, team: str | None = None
    ) -> tuple[IngestOutcome, int]:
        """Apply one request; return its outcome and the log position to wait for. With
        `team`, the events of other teams are rejected (a team's token ingests its own)."""
        received_ns = int(self.clock() * 1e9)
        received = received_ns / 1e9
        executions = request.executions
        touched: dict[str, PipelineState] | None = {} if self._detect else None
        verdicts, rejected = self._process(
            executions, received, touched, replaying=False, team=team
        )
        accepted = verdicts.count(_ACCEPTED)
        running = verdicts.count(_RUNNING)
        out = IngestOutcome(
            accepted=accepted,
            duplicates=verdicts.count(_DUPLICATE),
            running=running + verdicts.count(_LATE_RUNNING),
            rejected=rejected,
        )
        metrics.REQUESTS.inc()
        metrics.PIPELINES.set(len(self.shards))
        if out.accepted:
            metrics.EXECUTIONS.inc(out.accepted)
        if out.duplicates:
            metrics.DUPLICATES.inc(out.duplicates)
        if rejected:
            metrics.REJECTED.inc(len(rejected))
        if out.running:
            metrics.RUNNING_EVENTS.inc(out.running)

        applied = accepted + running
        if applied:
            mask = b"" if applied == len(executions) else bytes(verdicts.translate(_APPLIED))
            record = storage_pb2.LogRecord(
                executions=storage_pb2.ExecutionBatch(
                    received_unix_nanos=received_ns, request=raw, applied=mask
                )
            )
            seq = self.log.append(record.SerializeToString())
        else:
            # Nothing changed, but a duplicate's answer must not overtake the record that
            # counted the original: wait for everything logged so far.
            seq = self.log.last_seq
        if touched:
            if self.defer_detection:
                self.pending.update(touched)
                urgent = self.detector.urgent
                # Each pipeline once per request, however many of its failures the request
                # carries; only those whose streak grew since it was last judged are asked.
                judge = [
                    v for v in touched.values() if v.peak_failures > v.judged_failures and urgent(v)
                ]
                if judge:
                    for state in judge:
                        del self.pending[state.pipeline_id]
                    self.urgent.extend(judge)
            else:
                self.evaluate(touched.values())
        return out, seq

    def evaluate(self, pipelines: Iterable[PipelineState]) -> int:
        """Run the detector on `pipelines` and hand the verdicts to the sink."""
        now = self.clock()
        count = 0
        for state in pipelines:
            self.sink.receive(state, self.detector.evaluate(state, self.shards, now), now)
            count += 1
        return count

    def take_urgent(self) -> list[PipelineState]:
        """The pipelines found urgent since the last call, to judge now."""
        if not self.urgent:
            return []
        urgent, self.urgent = self.urgent, []
        return urgent

    def take_pending(self) -> list[PipelineState]:
        """The pipelines touched since the last call, to evaluate."""
        if not self.pending:
            return []
        pending, self.pending = self.pending, {}
        return list(pending.values())

    def _process(
        self,
        executions: Sequence[Any],
        received: float,
        touched: dict[str, PipelineState] | None,
        *,
        replaying: bool,
        mask: bytes = b"",
        team: str | None = None,
        to_execution: Callable[..., Execution | str] = convert,
        maybe_restored: set[int] | None = None,
    ) -> tuple[bytearray, list[tuple[int, str, str]]]:
        """Decide and apply each event; return a verdict per event (0 for rejected, or _ACCEPTED,
        _DUPLICATE, _RUNNING, _LATE_RUNNING) and the rejections.

        `executions` are PipelineExecution messages, turned into Executions by `to_execution`
        (`convert`); replaying a prefetched entry, they are rows that `from_row` turns.

        Replaying, only the events the mask marks are applied, and no decision is made again:
        the log holds what was applied, and forgetting ids by retention may differ between runs
        without changing what the log says happened. One loop serves both, inlined, because
        every event of every request passes through it.
        """
        verdicts = bytearray(len(executions))
        rejected: list[tuple[int, str, str]] = []
        limits = self.limits
        shards = self.shards
        index = shards.index
        seen = self.seen
        seen_ids = seen.ids
        # The keys restored from a snapshot, looked up only when the live set lacks the key.
        restored = seen.restored
        # Bare ids of a snapshot older than keys by pipeline: a duplicate for any pipeline.
        legacy = seen.legacy > 0
        check = not replaying
        # Nothing below awaits, so a snapshot cannot begin or end during the loop.
        job = shards.job
        apply_terminal = Shard.apply_terminal
        # Keys counted by this request, by team: remembered in `seen` after the loop, as
        # received at the request's time (event times are the runner's, and play no part).
        new_ids: dict[str, list[str]] = {}
        new_set: set[str] = set()
        for i, msg in enumerate(executions):
            if mask and not mask[i]:
                continue
            e = to_execution(msg, received, limits, check_limits=check)
            if isinstance(e, str):
                if replaying:
                    log.warning("log record holds an event that no longer converts: %s", safe(e))
                else:
                    rejected.append((i, msg.execution_id, e))
                continue
            if team is not None and e.team != team:
                rejected.append((i, msg.execution_id, _other_team(e, team)))
                continue
            status = e.status
            execution_id = e.execution_id
            k = key(e.pipeline_id, execution_id)
            if check and (
                k in seen_ids
                or k in new_set
                or (restored is not None and seen.in_restored(k))
                or (legacy and legacy_key(execution_id) in seen)
            ):
                verdicts[i] = _LATE_RUNNING if status == RUNNING else _DUPLICATE
                continue
            state = index.get(e.pipeline_id)
            if state is None:
                if check and shards.team_pipeline_count(e.team) >= limits.max_pipelines_per_team:
                    rejected.append((i, msg.execution_id, _too_many(e, limits)))
                    continue
                state = shards.create(e.pipeline_id, e.team)
            else:
                if check and state.team != e.team:
                    rejected.append((i, msg.execution_id, _team_mismatch(state, e)))
                    continue
                if job is not None:
                    job.preserve(state.shard, state)
            state.last_received = received
            if not state.changed:  # for the next delta snapshot
                state.changed = True
                shards.changed += 1
            if status == RUNNING:
                Shard.apply_running(state, e)
                verdicts[i] = _RUNNING
                if touched is not None:
                    touched[e.pipeline_id] = state
                continue
            # Deciding, the duplicate check above has already ruled both out.
            if check or (
                k not in new_set
                and k not in seen_ids
                and not (
                    restored is not None
                    and (maybe_restored is None or i in maybe_restored)
                    and seen.in_restored(k)
                )
            ):
                team_ids = new_ids.get(state.team)
                if team_ids is None:
                    new_ids[state.team] = [k]
                else:
                    team_ids.append(k)
                new_set.add(k)
            apply_terminal(state, e)
            if touched is not None:
                touched[e.pipeline_id] = state
            verdicts[i] = _ACCEPTED
        for team_name, team_ids in new_ids.items():
            seen.add_batch(team_name, team_ids, received)
        return verdicts, rejected

    def replay(self, payload: bytes) -> int:
        """Apply one log record again (recovery); return how many events it applied. Records
        of other kinds than executions apply nothing here."""
        record = storage_pb2.LogRecord.FromString(payload)
        if record.WhichOneof("entry") != "executions":
            return 0
        return self.replay_batch(record.executions)

    def replay_batch(self, batch: storage_pb2.ExecutionBatch) -> int:
        """Apply one logged batch of executions again; return how many events it applied."""
        received = batch.received_unix_nanos / 1e9
        rows = decode_rows(
            batch.request, batch.applied, received, self.limits.max_error_message_length
        )
        if rows is not None:  # the plain case, read straight from the bytes (server/core/wire.py)
            return self.replay_rows(received, rows)
        received, executions, mask = logged_batch(batch)
        verdicts, _ = self._process(executions, received, None, replaying=True, mask=mask)
        return len(verdicts) - verdicts.count(0)

    def replay_rows(
        self, received: float, rows: Sequence[Row | str], maybe_restored: set[int] | None = None
    ) -> int:
        """Apply one logged batch again from its applied events already converted (by the
        replay prefetch: `row`); return how many events it applied. With `maybe_restored`, the
        other rows' ids are known not to be among those restored from the snapshot (the
        prefetch looked them up), and are not looked up there again."""
        verdicts, _ = self._process(
            rows,
            received,
            None,
            replaying=True,
            to_execution=from_row,
            maybe_restored=maybe_restored,
        )
        return len(verdicts) - verdicts.count(0)


def logged_batch(batch: storage_pb2.ExecutionBatch) -> tuple[float, Sequence[Any], bytes]:
    """A logged batch's time received (Unix seconds), its request's events (PipelineExecution
    messages), and its mask: the events to apply again are those the mask marks, or all of
    them when the mask is empty."""
    executions = service_pb2.IngestRequest.FromString(batch.request).executions
    return batch.received_unix_nanos / 1e9, executions, batch.applied


Row = tuple[
    str, str, str, int, float | None, float | None, float | None, int, tuple[str, ...],
    dict[str, str], str, float,
]  # fmt: skip
"""An Execution's fields in the order of its constructor, for passing between processes."""


def row(e: Execution) -> Row:
    """`e` as a Row, with its pipeline and team interned (marshal writes a repeated string
    once, and the reader gets one string for every event of a pipeline)."""
    intern = sys.intern
    return (
        e.execution_id,
        intern(e.pipeline_id),
        intern(e.team),
        e.status,
        e.started_at,
        e.finished_at,
        e.duration,
        e.records,
        e.upstream,
        dict(e.labels),
        e.error_message,
        e.event_time,
    )


def from_row(
    r: Row | str, received: float, limits: IngestLimits, *, check_limits: bool
) -> Execution | str:
    """The Execution of a Row (or the reason its event no longer converts), in the calling
    convention of `convert`."""
    return r if isinstance(r, str) else Execution(*r)


def _team_mismatch(state: PipelineState, e: Execution) -> str:
    return (
        f"pipeline {e.pipeline_id!r} belongs to team {state.team!r}, not {e.team!r}; "
        "a pipeline keeps the team of its first event"
    )


def _other_team(e: Execution, team: str) -> str:
    return f"team {e.team!r} is not this token's team {team!r}: a team ingests only its own"


def _too_many(e: Execution, limits: IngestLimits) -> str:
    return (
        f"team {e.team!r} already has {limits.max_pipelines_per_team} pipelines, its limit "
        f"(server.limits.max_pipelines_per_team): new pipeline {e.pipeline_id!r} not counted"
    )
