"""The fleet generator's pure part: fleets, events, counts and batches; no server."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from pipewarden import simulate
from pipewarden.simulate import FleetSpec, PipelineProfile
from pipewarden.v1 import execution_pb2

END = 1_750_000_000.0
SPEC = FleetSpec(pipelines=60, days=2.0, seed=7, faults=0.2)
RUNNING = execution_pb2.EXECUTION_STATUS_RUNNING
SUCCEEDED = execution_pb2.EXECUTION_STATUS_SUCCEEDED
FAILED = execution_pb2.EXECUTION_STATUS_FAILED
CANCELLED = execution_pb2.EXECUTION_STATUS_CANCELLED
TERMINAL = {SUCCEEDED, FAILED, CANCELLED}

Event = execution_pb2.PipelineExecution


def seconds(ts: Timestamp | Duration) -> float:
    return ts.seconds + ts.nanos * 1e-9


def scheduled(e: Event) -> float:
    """The run's schedule slot, which its execution_id names."""
    slot = e.execution_id.rpartition("@")[2]
    return datetime.strptime(slot, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def event_time(e: Event) -> float:
    return seconds(e.started_at if e.status == RUNNING else e.finished_at)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(simulate.generate(SPEC, END))


@pytest.fixture(scope="module")
def fleet() -> list[PipelineProfile]:
    return simulate.build_fleet(SPEC)


def terminal_by_pipeline(events: Sequence[Event]) -> dict[str, list[Event]]:
    runs: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.status in TERMINAL:
            runs[e.pipeline_id].append(e)
    for pipeline_runs in runs.values():
        pipeline_runs.sort(key=lambda e: seconds(e.started_at))
    return runs


def check_valid(events: Sequence[Event], spec: FleetSpec, end: float) -> None:
    """Every event is one the contract accepts, within the window."""
    window_start = end - spec.days * 86_400
    for e in events:
        assert e.execution_id and e.pipeline_id and e.team
        assert e.pipeline_id.startswith(f"{e.team}.")
        assert e.status != execution_pb2.EXECUTION_STATUS_UNSPECIFIED
        assert e.HasField("started_at")
        assert window_start <= seconds(e.started_at) < end
        assert e.records_processed >= 0
        if e.status == RUNNING:
            assert not e.HasField("finished_at") and not e.HasField("duration")
            continue
        assert e.HasField("finished_at") and e.HasField("duration")
        started, finished = seconds(e.started_at), seconds(e.finished_at)
        assert started <= finished <= end
        assert e.duration.seconds >= 0 and e.duration.nanos >= 0
        assert math.isclose(seconds(e.duration), finished - started, abs_tol=1e-6)
        assert bool(e.error_message) == (e.status == FAILED)


def test_same_seed_same_events(events: list[Event]) -> None:
    again = list(simulate.generate(SPEC, END))
    assert [e.SerializeToString() for e in again] == [e.SerializeToString() for e in events]


def test_other_seed_other_fleet(fleet: list[PipelineProfile]) -> None:
    other = simulate.build_fleet(FleetSpec(pipelines=60, days=2.0, seed=8, faults=0.2))
    assert [p.pipeline_id for p in other] != [p.pipeline_id for p in fleet]


def test_events_in_time_order(events: list[Event]) -> None:
    times = [event_time(e) for e in events]
    assert times == sorted(times)


def test_every_event_valid(events: list[Event]) -> None:
    check_valid(events, SPEC, END)
    statuses = {e.status for e in events}
    assert {RUNNING, SUCCEEDED, FAILED} <= statuses


def test_execution_ids_unique(events: list[Event]) -> None:
    terminal = [e.execution_id for e in events if e.status in TERMINAL]
    running = [e.execution_id for e in events if e.status == RUNNING]
    assert len(set(terminal)) == len(terminal)
    assert len(set(running)) == len(running)


def test_running_event_precedes_each_terminal_one(events: list[Event]) -> None:
    started: dict[str, Event] = {}
    for e in events:
        if e.status == RUNNING:
            started[e.execution_id] = e
        else:
            assert e.execution_id in started
            assert started[e.execution_id].started_at == e.started_at


def test_without_running_events() -> None:
    spec = FleetSpec(pipelines=20, days=1.0, seed=3, running_events=False)
    events = list(simulate.generate(spec, END))
    assert events and all(e.status in TERMINAL for e in events)
    assert simulate.count_events(spec, END) == len(events)


@pytest.mark.parametrize(
    "spec",
    [
        SPEC,
        FleetSpec(pipelines=30, days=1.5, seed=11, running_events=False),
        FleetSpec(teams=3, pipelines=25, days=4.0, seed=5, faults=1.0),
    ],
)
def test_count_events_matches_generate(spec: FleetSpec) -> None:
    assert simulate.count_events(spec, END) == sum(1 for _ in simulate.generate(spec, END))


def test_runs_are_the_same_in_overlapping_windows() -> None:
    spec = FleetSpec(pipelines=20, days=1.0, seed=4)
    first = {e.execution_id: e for e in simulate.generate(spec, END) if e.status in TERMINAL}
    later = {e.execution_id: e for e in simulate.generate(spec, END + 6 * 3600)}
    shared = first.keys() & later.keys()
    assert len(shared) > len(first) / 2
    assert all(first[i] == later[i] for i in shared)


def test_fault_count_and_kinds(fleet: list[PipelineProfile]) -> None:
    faulty = [p for p in fleet if p.fault is not None]
    assert len(faulty) == round(SPEC.faults * SPEC.pipelines)
    assert {p.fault for p in faulty} == set(simulate.FAULT_KINDS)
    assert not any(p.fault for p in simulate.build_fleet(FleetSpec(pipelines=60, seed=7)))
    assert sum(bool(p.fault) for p in simulate.build_fleet(FleetSpec(faults=0.001))) == 1


def test_faults_show_in_the_events(events: list[Event], fleet: list[PipelineProfile]) -> None:
    runs = terminal_by_pipeline(events)
    for p in fleet:
        if p.fault is None:
            continue
        own = runs[p.pipeline_id]
        start = simulate.fault_start(p, END)
        assert start is not None
        before = [e for e in own if scheduled(e) < start and e.status == SUCCEEDED]
        after = [e for e in own if scheduled(e) >= start]
        assert len(before) >= 5, p
        if p.fault == "stale":
            assert not after
            last = max(seconds(e.finished_at) for e in own)
            assert END - last > 3 * p.cadence_seconds
            continue
        assert len(after) >= p.fault_runs >= 3
        if p.fault == "failures":
            assert all(e.status == FAILED for e in own[-p.fault_runs :])
            assert len({e.error_message for e in after}) == 1
            continue
        after = [e for e in after if e.status == SUCCEEDED]
        if p.fault == "slowdown":
            baseline = statistics.median(seconds(e.duration) for e in before)
            assert statistics.median(seconds(e.duration) for e in after) > 2 * baseline
        else:
            baseline = statistics.median(e.records_processed for e in before)
            assert statistics.median(e.records_processed for e in after) < 0.2 * baseline


def test_healthy_pipelines_keep_running(events: list[Event], fleet: list[PipelineProfile]) -> None:
    runs = terminal_by_pipeline(events)
    for p in fleet:
        if p.fault is None and p.cadence_seconds < 86_400:
            last = seconds(runs[p.pipeline_id][-1].finished_at)
            assert END - last < 2 * p.cadence_seconds + 3 * p.duration_seconds


def test_fleet_spans_orders_of_magnitude() -> None:
    fleet = simulate.build_fleet(FleetSpec())
    assert len(fleet) == 200
    durations = [p.duration_seconds for p in fleet]
    records = [p.records for p in fleet]
    assert min(durations) < 60 and max(durations) > 3_600
    assert min(records) < 10_000 and max(records) > 10_000_000
    assert {900.0, 3_600.0, 86_400.0} <= {p.cadence_seconds for p in fleet}
    typical = [p for p in fleet if 0.002 <= p.failure_rate <= 0.05]
    assert len(typical) >= 0.9 * len(fleet)
    assert {p.labels["tier"] for p in fleet} == {"gold", "silver", "bronze"}
    assert {p.labels["engine"] for p in fleet} == {"airflow", "spark", "dbt", "flink"}


@pytest.mark.parametrize("seed", range(10))
def test_pipeline_ids_unique(seed: int) -> None:
    fleet = simulate.build_fleet(FleetSpec(pipelines=600, seed=seed))
    assert len({p.pipeline_id for p in fleet}) == 600


def test_teams_named_and_uneven() -> None:
    fleet = simulate.build_fleet(FleetSpec(teams=10, pipelines=300))
    sizes: dict[str, int] = defaultdict(int)
    for p in fleet:
        sizes[p.team] += 1
    assert set(sizes) == {*simulate.TEAM_NAMES, "team-9", "team-10"}
    assert sum(sizes.values()) == 300 and len({p.pipeline_id for p in fleet}) == 300
    assert max(sizes.values()) >= 2 * min(sizes.values())
    assert all(p.pipeline_id.startswith(f"{p.team}.") for p in fleet)


def test_upstream_graph_is_a_dag() -> None:
    fleet = simulate.build_fleet(FleetSpec())
    position = {p.pipeline_id: i for i, p in enumerate(fleet)}
    team = {p.pipeline_id: p.team for p in fleet}
    edges = [(up, p) for p in fleet for up in p.upstream]
    assert all(position[up] < position[p.pipeline_id] for up, p in edges)
    assert any(team[up] == p.team for up, p in edges)
    assert any(team[up] != p.team for up, p in edges)
    # And directly: a depth-first search finds no cycle.
    upstream = {p.pipeline_id: p.upstream for p in fleet}
    done: set[str] = set()

    def visit(node: str, path: frozenset[str]) -> None:
        assert node not in path, f"cycle through {node}"
        if node not in done:
            for up in upstream[node]:
                visit(up, path | {node})
            done.add(node)

    for node in upstream:
        visit(node, frozenset())


def test_batches() -> None:
    events = list(simulate.generate(FleetSpec(pipelines=5, days=1.0), END))
    requests = list(simulate.batches(events, 7))
    assert [len(r.executions) for r in requests[:-1]] == [7] * (len(requests) - 1)
    assert 1 <= len(requests[-1].executions) <= 7
    assert [e for r in requests for e in r.executions] == events
    assert list(simulate.batches([], 7)) == []
    with pytest.raises(ValueError, match="batch size"):
        list(simulate.batches(events, 0))


@pytest.mark.parametrize(
    ("field", "value"), [("teams", 0), ("pipelines", -1), ("days", 0.0), ("faults", 1.5)]
)
def test_spec_validation(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        FleetSpec(**{field: value})  # type: ignore[arg-type]


@settings(max_examples=20, deadline=None)
@given(
    teams=st.integers(1, 12),
    pipelines=st.integers(0, 12),
    days=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**32),
    faults=st.sampled_from([0.0, 0.3, 1.0]),
    running_events=st.booleans(),
)
def test_any_small_fleet_is_valid(
    teams: int, pipelines: int, days: float, seed: int, faults: float, running_events: bool
) -> None:
    spec = FleetSpec(teams, pipelines, days, seed, faults, running_events)
    events = list(simulate.generate(spec, END))
    check_valid(events, spec, END)
    assert [event_time(e) for e in events] == sorted(event_time(e) for e in events)
    assert simulate.count_events(spec, END) == len(events)
    assert len(simulate.build_fleet(spec)) == pipelines
