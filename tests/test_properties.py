"""Property tests: the aggregates against a simple reference model, for any sequence of events.

The core is exercised in-process (it is pure: no I/O); the end-to-end tests cover the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipewarden.client import execution
from pipewarden.server.core.dedup import SeenExecutions
from pipewarden.server.core.ingest import Ingestor
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.shards import ShardSet
from pipewarden.server.storage.eventlog import MemoryLog
from pipewarden.v1 import execution_pb2, service_pb2

T0 = 1_780_000_000.0
PIPELINES = ["p0", "p1", "p2", "p3"]
HOME_TEAM = {"p0": "red", "p1": "red", "p2": "blue", "p3": "green"}
STATUSES = ["succeeded", "failed", "cancelled", "running"]


@dataclass
class Event:
    """One generated event and what the model knows of it."""

    msg: execution_pb2.PipelineExecution
    valid: bool
    time: float
    duration: float | None


@st.composite
def events(draw: st.DrawFn) -> Event:
    pipeline = draw(st.sampled_from(PIPELINES))
    team = HOME_TEAM[pipeline] if draw(st.integers(0, 9)) else "intruder"
    status = draw(st.sampled_from(STATUSES))
    eid = f"e{draw(st.integers(0, 14))}"
    start = T0 + draw(st.integers(0, 20)) * 10.0  # few distinct times: ties happen
    shape = draw(st.sampled_from(["finished", "duration", "both", "start-only"]))
    length = float(draw(st.integers(0, 50)))
    finished = start + length if shape in ("finished", "both") else None
    duration = length + 1 if shape == "both" else length if shape == "duration" else None
    records = draw(st.integers(0, 10**12))
    bad = draw(st.sampled_from([None] * 6 + ["records", "order", "id", "status"]))
    msg = execution(
        eid,
        pipeline,
        team,
        "running" if status == "running" else status,
        started_at=start,
        finished_at=finished,
        duration=duration,
        records=records,
        error_message=f"err-{eid}" if status == "failed" else "",
    )
    if bad == "records":
        msg.records_processed = -1
    elif bad == "order":
        msg.finished_at.FromSeconds(int(start) - 5)
    elif bad == "id":
        msg.execution_id = ""
    elif bad == "status":
        msg.status = execution_pb2.EXECUTION_STATUS_UNSPECIFIED
    known = duration if duration is not None else (length if finished is not None else None)
    if finished is not None:
        when = finished
    elif duration is not None:
        when = start + duration
    else:
        when = start
    if status == "running":
        when = start
    return Event(msg, bad is None, when, known)


@dataclass
class ModelPipeline:
    team: str
    runs: list[tuple[float, int, str, float | None, int, str]] = field(default_factory=list)
    in_flight: set[str] = field(default_factory=set)


class Model:
    """The contract's reading, computed the obvious way."""

    def __init__(self) -> None:
        self.pipelines: dict[str, ModelPipeline] = {}
        self.counted: set[tuple[str, str]] = set()  # an execution: pipeline and id together
        self.arrival = 0

    def apply(self, ev: Event) -> str:
        m = ev.msg
        if not ev.valid:
            return "rejected"
        p = self.pipelines.get(m.pipeline_id)
        status = execution_pb2.ExecutionStatus.Name(m.status).split("_")[-1].lower()
        execution = (m.pipeline_id, m.execution_id)
        if status == "running":
            if execution in self.counted:
                return "running"
        elif execution in self.counted:
            return "duplicate"
        if p is None:
            p = self.pipelines[m.pipeline_id] = ModelPipeline(m.team)
        elif p.team != m.team:
            return "rejected"
        if status == "running":
            p.in_flight.add(m.execution_id)
            return "running"
        self.counted.add(execution)
        p.in_flight.discard(m.execution_id)
        self.arrival += 1
        p.runs.append(
            (ev.time, self.arrival, status, ev.duration, m.records_processed, m.error_message)
        )
        return "accepted"

    @staticmethod
    def health(p: ModelPipeline) -> dict[str, float | int | str | None]:
        judged = [r for r in p.runs if r[2] != "cancelled"]
        ok = sum(1 for r in judged if r[2] == "succeeded")
        durations = [r[3] for r in judged if r[3] is not None]
        ordered = sorted(p.runs)
        successes = [r for r in ordered if r[2] == "succeeded"]
        after = (successes[-1][0], successes[-1][1]) if successes else (-math.inf, 0)
        streak = sum(1 for r in ordered if r[2] == "failed" and (r[0], r[1]) > after)
        failures = [r for r in p.runs if r[2] == "failed"]
        return {
            "total": len(p.runs),
            "succeeded": ok,
            "failed": len(judged) - ok,
            "cancelled": len(p.runs) - len(judged),
            "success_rate": ok / len(judged) if judged else 0.0,
            "avg_duration": sum(durations) / len(durations) if durations else 0.0,
            "avg_records": sum(r[4] for r in judged) / len(judged) if judged else 0.0,
            "last_time": ordered[-1][0] if ordered else None,
            "last_status": ordered[-1][2] if ordered else None,
            "streak": streak,
            "last_error": failures[-1][5] if failures else "",
            "in_flight": len(p.in_flight),
        }


def _ingestor(shards: int = 4) -> Ingestor:
    return Ingestor(
        ShardSet(shards, window=1024),
        SeenExecutions(10**6),
        MemoryLog(),
        IngestLimits(),
        clock=lambda: T0 + 10_000,
    )


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


requests = st.lists(st.lists(events(), min_size=0, max_size=8), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_aggregates_match_the_model(batches: list[list[Event]]) -> None:
    core = _ingestor()
    model = Model()
    for batch in batches:
        req = service_pb2.IngestRequest(executions=[e.msg for e in batch])
        outcome, _ = core.ingest(req.SerializeToString(), req)
        verdicts = [model.apply(e) for e in batch]
        assert outcome.accepted == verdicts.count("accepted")
        assert outcome.duplicates == verdicts.count("duplicate")
        assert outcome.running == verdicts.count("running")
        assert [i for i, _, _ in outcome.rejected] == [
            i for i, v in enumerate(verdicts) if v == "rejected"
        ]
    assert len(core.shards) == len(model.pipelines)
    for pid, mp in model.pipelines.items():
        state = core.shards.get(pid)
        assert state is not None
        want = Model.health(mp)
        assert state.team == mp.team
        assert (state.total, state.succeeded, state.failed, state.cancelled) == (
            want["total"],
            want["succeeded"],
            want["failed"],
            want["cancelled"],
        )
        assert _close(state.success_rate, float(want["success_rate"] or 0))
        assert _close(state.avg_duration, float(want["avg_duration"] or 0))
        assert _close(state.avg_records, float(want["avg_records"] or 0))
        assert state.last_time == want["last_time"]
        assert state.consecutive_failures == want["streak"]
        assert state.last_error == want["last_error"]
        assert (len(state.in_flight) if state.in_flight else 0) == want["in_flight"]
        status_name = {1: "succeeded", 2: "failed", 4: "cancelled"}.get(state.last_status)
        assert status_name == want["last_status"]
    for team in {mp.team for mp in model.pipelines.values()}:
        totals = core.shards.team_totals(team)
        assert totals is not None
        mine = [Model.health(mp) for mp in model.pipelines.values() if mp.team == team]
        assert totals.pipelines == len(mine)
        assert totals.succeeded == sum(int(h["succeeded"] or 0) for h in mine)
        assert totals.failed == sum(int(h["failed"] or 0) for h in mine)
        assert totals.cancelled == sum(int(h["cancelled"] or 0) for h in mine)
        assert totals.failing == sum(1 for h in mine if h["last_status"] == "failed")
        runs = [
            r
            for mp in model.pipelines.values()
            if mp.team == team
            for r in mp.runs
            if r[2] != "cancelled"
        ]
        assert totals.records_sum == sum(r[4] for r in runs)
        durations = [r[3] for r in runs if r[3] is not None]
        assert totals.duration_count == len(durations)
        assert _close(totals.duration_sum, sum(durations))


def _state(core: Ingestor) -> list[bytes]:
    return [s.SerializeToString(deterministic=True) for s in core.shards.dump()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_replaying_the_log_and_restoring_a_dump_rebuild_the_same_state(
    batches: list[list[Event]],
) -> None:
    core = _ingestor()
    for batch in batches:
        req = service_pb2.IngestRequest(executions=[e.msg for e in batch])
        core.ingest(req.SerializeToString(), req)
    replayed = _ingestor()
    for _, payload in core.log.read(0):
        replayed.replay(payload)
    assert _state(replayed) == _state(core)
    assert list(replayed.seen) == list(core.seen)

    restored = _ingestor()
    restored.shards.restore(core.shards.dump())
    assert _state(restored) == _state(core)

    # A different shard count re-spreads the pipelines; every figure stays the same.
    respread = _ingestor(shards=3)
    respread.shards.restore(core.shards.dump())
    for state in core.shards.pipelines():
        other = respread.shards.get(state.pipeline_id)
        assert other is not None
        assert (other.total, other.failed, other.records_sum, other.consecutive_failures) == (
            state.total,
            state.failed,
            state.records_sum,
            state.consecutive_failures,
        )
    for team in core.shards.teams():
        a, b = core.shards.team_totals(team), respread.shards.team_totals(team)
        assert a is not None and b is not None
        assert (a.pipelines, a.succeeded, a.failed, a.records_sum, a.failing) == (
            b.pipelines,
            b.succeeded,
            b.failed,
            b.records_sum,
            b.failing,
        )
