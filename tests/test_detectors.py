"""Own-history detectors and the deadlines of staleness and stuck runs, on the pure core; and
ListAnomalies end to end."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from pipewarden.v1 import anomaly_pb2, service_pb2, service_pb2_grpc
from server.detection.engine import DetectionEngine
from server.detection.settings import DetectionSettings
from server.model import FAILED, RUNNING, SUCCEEDED, Execution
from server.shards import PipelineState, ShardSet
from tests.helpers import T0, request, run

HOUR = 3600.0
STREAK, REGRESSION, DROP, STALE, STUCK = 4, 5, 6, 7, 8


def history(
    runs: list[tuple[int, float, int]], pid: str = "p", cadence: float = HOUR
) -> tuple[ShardSet, PipelineState]:
    """A pipeline with runs (status, duration, records), one per `cadence`."""
    shards = ShardSet(2, window=64)
    state = shards.create(pid, "team")
    for i, (status, duration, records) in enumerate(runs):
        t = T0 + i * cadence
        e = Execution(
            f"{pid}-{i}",
            pid,
            "team",
            status,
            t - duration,
            t,
            duration,
            records,
            (),
            {},
            "boom" if status == FAILED else "",
            t,
        )
        shards.shard_for(pid).apply_terminal(state, e)
    return shards, state


def kinds(
    engine: DetectionEngine, shards: ShardSet, state: PipelineState, now: float
) -> dict[int, int]:
    return {a.kind: a.severity for a in engine.evaluate(state, shards, now)}


def own(enabled: str) -> DetectionEngine:
    return DetectionEngine(DetectionSettings(), enabled=[enabled])


@pytest.mark.parametrize(("fails", "severity"), [(2, None), (3, 2), (4, 2), (5, 3), (9, 3)])
def test_failures_in_a_row(fails: int, severity: int | None) -> None:
    shards, p = history([(SUCCEEDED, 60, 100)] * 10 + [(FAILED, 60, 0)] * fails)
    assert kinds(own("consecutive_failures"), shards, p, T0).get(STREAK) == severity


def _steady(n: int = 30) -> list[tuple[int, float, int]]:
    # Noisy but healthy: durations 90..110 s, records 9,000..11,000.
    return [(SUCCEEDED, 90.0 + (i * 7) % 21, 9000 + (i * 377) % 2001) for i in range(n)]


def test_one_slow_run_is_not_a_regression_but_three_are() -> None:
    engine = own("duration_regression")
    shards, p = history([*_steady(), (SUCCEEDED, 900.0, 10_000)])
    assert kinds(engine, shards, p, T0) == {}
    shards, p = history([*_steady(), *[(SUCCEEDED, 450.0, 10_000)] * 3])
    assert kinds(engine, shards, p, T0) == {REGRESSION: 3}  # 4.5x its usual 100 s: CRITICAL
    shards, p = history([*_steady(), *[(SUCCEEDED, 170.0, 10_000)] * 3])
    assert kinds(engine, shards, p, T0) == {REGRESSION: 1}  # 1.7x: MEDIUM
    shards, p = history([*_steady(), *[(SUCCEEDED, 140.0, 10_000)] * 3])
    assert kinds(engine, shards, p, T0) == {}  # 1.4x is within the ratio of 1.5


def test_volume_drop_needs_the_recent_median_to_fall() -> None:
    engine = own("volume_drop")
    shards, p = history([*_steady(), (SUCCEEDED, 100.0, 10)])
    assert kinds(engine, shards, p, T0) == {}
    shards, p = history([*_steady(), *[(SUCCEEDED, 100.0, 500)] * 3])
    assert kinds(engine, shards, p, T0) == {DROP: 3}  # 95% below: CRITICAL
    shards, p = history([*_steady(), *[(SUCCEEDED, 100.0, 4000)] * 3])
    assert kinds(engine, shards, p, T0) == {DROP: 1}  # 60% below: MEDIUM


def test_little_history_is_judged_by_peers_then_by_itself() -> None:
    engine = DetectionEngine(DetectionSettings())
    shards = ShardSet(2, window=64)
    for i in range(5):
        peer = shards.create(f"peer{i}", "team")
        for k in range(12):
            t = T0 + k * HOUR
            shards.shard_for(peer.pipeline_id).apply_terminal(
                peer,
                Execution(
                    f"{i}-{k}",
                    peer.pipeline_id,
                    "team",
                    SUCCEEDED,
                    t - 10,
                    t,
                    10.0,
                    100,
                    (),
                    {},
                    "",
                    t,
                ),
            )
        engine.evaluate(peer, shards, T0)
    slow = shards.create("slow", "team")
    for k in range(12):
        t = T0 + k * HOUR
        shards.shard_for("slow").apply_terminal(
            slow,
            Execution(f"s-{k}", "slow", "team", SUCCEEDED, t - 500, t, 500.0, 100, (), {}, "", t),
        )
        found = kinds(engine, shards, slow, t)
        if k < 4:
            assert found == {}, k  # fewer than min_executions: not judged
        elif k < 10:
            assert 2 in found, k  # HIGH_DURATION from the peers, until it has its own baseline
        else:
            assert found == {}, k  # slow by nature is its normal


def test_staleness_deadline_and_clearing() -> None:
    engine = own("staleness")
    shards, p = history(_steady(12), cadence=HOUR)
    last = p.last_time
    assert last is not None
    assert kinds(engine, shards, p, last + 10) == {}
    assert engine.due(last + 3 * HOUR - 1) == []
    assert engine.due(last + 3 * HOUR + 1) == ["p"]
    assert kinds(engine, shards, p, last + 3 * HOUR + 1) == {STALE: 1}
    assert engine.due(last + 6 * HOUR + 1) == ["p"]
    assert kinds(engine, shards, p, last + 6 * HOUR + 1) == {STALE: 2}
    assert kinds(engine, shards, p, last + 12 * HOUR + 1) == {STALE: 3}
    # A run arrives: the anomaly is gone at the next evaluation.
    e = Execution(
        "late",
        "p",
        "team",
        SUCCEEDED,
        last + 13 * HOUR - 100,
        last + 13 * HOUR,
        100.0,
        10_000,
        (),
        {},
        "",
        last + 13 * HOUR,
    )
    shards.shard_for("p").apply_terminal(p, e)
    assert kinds(engine, shards, p, last + 13 * HOUR + 1) == {}


def test_stuck_run() -> None:
    engine = own("stuck_run")
    shards, p = history(_steady(12))
    start = (p.last_time or 0) + HOUR
    shards.shard_for("p").apply_running(
        p, Execution("r", "p", "team", RUNNING, start, None, None, 0, (), {}, "", start)
    )
    # Usual duration ~100 s, so the 300 s minimum applies before 4x: HIGH after 400 s.
    assert kinds(engine, shards, p, start + 350) == {}
    assert engine.due(start + 401) == ["p"]
    assert kinds(engine, shards, p, start + 401) == {STUCK: 2}
    assert kinds(engine, shards, p, start + 1001) == {STUCK: 3}


async def test_list_anomalies_end_to_end(stub: service_pb2_grpc.PipelineMonitorStub) -> None:
    # Runs every 6 minutes up to now, by the server's clock (older ones would be stale).
    step = 360.0
    base = time.time() - 8 * step
    healthy = [
        run(f"h{p}-{i}", f"healthy{p}", start=base + i * step) for p in range(4) for i in range(8)
    ]
    failing = [
        run(f"f{i}", "broken", status="failed", start=base + (2 + i) * step) for i in range(6)
    ]
    await stub.Ingest(request(*healthy, *failing))
    found: list[anomaly_pb2.Anomaly] = []
    for _ in range(100):  # detection runs a moment after ingestion
        found = list((await stub.ListAnomalies(service_pb2.ListAnomaliesRequest())).anomalies)
        if found:
            break
        await asyncio.sleep(0.02)
    assert {(a.pipeline_id, a.kind) for a in found} == {
        ("broken", anomaly_pb2.ANOMALY_KIND_CONSECUTIVE_FAILURES),
        ("broken", anomaly_pb2.ANOMALY_KIND_LOW_SUCCESS_RATE),
    }
    streak = next(a for a in found if a.kind == anomaly_pb2.ANOMALY_KIND_CONSECUTIVE_FAILURES)
    assert streak.severity == anomaly_pb2.SEVERITY_CRITICAL and streak.observed == 6
    assert "6 failures in a row" in streak.message and streak.team == "team-a"
    assert found[0].severity >= found[-1].severity
    only_high = await stub.ListAnomalies(
        service_pb2.ListAnomaliesRequest(min_severity=anomaly_pb2.SEVERITY_CRITICAL)
    )
    # Success rate 0 against peers at 1.0 (d = 1.0 > 2·0.2) and 6 failures: both CRITICAL.
    assert sorted(a.kind for a in only_high.anomalies) == [
        anomaly_pb2.ANOMALY_KIND_LOW_SUCCESS_RATE,
        anomaly_pb2.ANOMALY_KIND_CONSECUTIVE_FAILURES,
    ]
    none = await stub.ListAnomalies(service_pb2.ListAnomaliesRequest(pipeline_id="healthy0"))
    assert list(none.anomalies) == []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListAnomalies(service_pb2.ListAnomaliesRequest(min_severity=9))  # type: ignore[arg-type]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The pipeline recovers: its anomalies clear by themselves.
    await stub.Ingest(
        request(*(run(f"ok{i}", "broken", start=base + 8 * step + i) for i in range(2)))
    )
    for _ in range(100):
        left = await stub.ListAnomalies(service_pb2.ListAnomaliesRequest(pipeline_id="broken"))
        if not any(a.kind == anomaly_pb2.ANOMALY_KIND_CONSECUTIVE_FAILURES for a in left.anomalies):
            break
        await asyncio.sleep(0.02)
    kinds_left = {a.kind for a in left.anomalies}
    assert anomaly_pb2.ANOMALY_KIND_CONSECUTIVE_FAILURES not in kinds_left
