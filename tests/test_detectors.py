"""Own-history detectors and the deadlines of staleness and stuck runs, on the pure core; and
ListAnomalies end to end."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from dataclasses import replace

import grpc
import pytest

from pipewarden.server.app import App
from pipewarden.server.core.dedup import SeenExecutions
from pipewarden.server.core.ingest import Ingestor
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.model import FAILED, RUNNING, SUCCEEDED, Execution
from pipewarden.server.core.shards import PipelineState, ShardSet
from pipewarden.server.detection.engine import DetectionEngine
from pipewarden.server.detection.history import median, spread
from pipewarden.server.detection.settings import DetectionSettings
from pipewarden.server.storage.eventlog import MemoryLog
from pipewarden.v1 import anomaly_pb2, service_pb2, service_pb2_grpc
from tests.support.helpers import T0, request, run, until

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


def _bimodal(n: int = 28) -> list[tuple[int, float, int]]:
    # Noisy: most runs within 4% of 100 s (a warm cache), the rest 18-25% off either way. The
    # MAD sees only the tight runs (1.4826·MAD of the logs 0.06); the real spread is ~0.14.
    tight = [1.0, 1.03, 0.97, 1.04, 0.96, 1.02, 0.98]
    wide = [1.25, 0.8, 1.2, 0.82, 1.18]
    return [
        (
            SUCCEEDED,
            100.0 * (tight[(i // 2) % 7] if i % 12 in (0, 1, 3, 4, 6, 7, 9) else wide[i % 5]),
            10_000,
        )
        for i in range(n)
    ]


def test_a_noisy_pipeline_needs_more_than_its_mad_suggests() -> None:
    engine = own("duration_regression")
    shards, p = history([*_bimodal(), *[(SUCCEEDED, 160.0, 10_000)] * 3])
    assert kinds(engine, shards, p, T0) == {}  # 1.6x: within this pipeline's noise
    shards, p = history([*_bimodal(), *[(SUCCEEDED, 200.0, 10_000)] * 3])
    assert REGRESSION in kinds(engine, shards, p, T0)  # 2x still is a regression


def test_the_spread_is_robust_and_efficient() -> None:
    logs = [math.log1p(d) for _, d, _ in _bimodal()]
    mid = median(logs)
    mad = 1.4826 * median([abs(v - mid) for v in logs])
    sd = math.sqrt(sum((v - mid) ** 2 for v in logs) / (len(logs) - 1))
    assert mad < 0.5 * sd and spread(logs, mid) > 0.9 * sd  # sees the wide runs the MAD misses
    wild = [*logs, math.log1p(5000.0)]  # one run 50x as long
    assert spread(wild, median(wild)) == pytest.approx(spread(logs, mid), rel=0.1)
    assert spread([2.0] * 10, 2.0) == 0.0


def test_volume_drop_needs_the_recent_median_to_fall() -> None:
    engine = own("volume_drop")
    shards, p = history([*_steady(), (SUCCEEDED, 100.0, 10)])
    assert kinds(engine, shards, p, T0) == {}
    shards, p = history([*_steady(), *[(SUCCEEDED, 100.0, 500)] * 3])
    assert kinds(engine, shards, p, T0) == {DROP: 3}  # 95% below: CRITICAL
    shards, p = history([*_steady(), *[(SUCCEEDED, 100.0, 4000)] * 3])
    assert kinds(engine, shards, p, T0) == {DROP: 1}  # 60% below: MEDIUM


def _fleet_of_peers(engine: DetectionEngine) -> ShardSet:
    """Five pipelines that ran 12 hourly times each, 10 s and always successfully."""
    shards = ShardSet(2, window=64)
    for i in range(5):
        peer = shards.create(f"peer{i}", "team")
        for k in range(12):
            t = T0 + k * HOUR
            e = Execution(
                f"{i}-{k}", peer.pipeline_id, "team", SUCCEEDED, t - 10, t, 10.0, 100, (), {}, "", t
            )
            shards.shard_for(peer.pipeline_id).apply_terminal(peer, e)
        engine.evaluate(peer, shards, T0)
    return shards


def _newcomer(
    engine: DetectionEngine, shards: ShardSet, runs: list[tuple[int, float]]
) -> list[dict[int, int]]:
    """A new pipeline's runs (status, duration), hourly; the verdicts after each."""
    p = shards.create("new", "team")
    out = []
    for k, (status, duration) in enumerate(runs):
        t = T0 + k * HOUR
        e = Execution(
            f"n-{k}", "new", "team", status, t - duration, t, duration, 100, (), {}, "", t
        )
        shards.shard_for("new").apply_terminal(p, e)
        out.append(kinds(engine, shards, p, t))
    return out


def test_a_new_slow_pipeline_is_not_judged_slow_by_unlike_peers() -> None:
    engine = DetectionEngine(DetectionSettings())
    shards = _fleet_of_peers(engine)
    assert all(found == {} for found in _newcomer(engine, shards, [(SUCCEEDED, 500.0)] * 30))


def test_with_alike_peers_a_new_pipeline_is_judged_by_them_until_it_has_a_baseline() -> None:
    defaults = DetectionSettings()
    peer = replace(defaults.peer, duration=replace(defaults.peer.duration, new_pipelines=True))
    engine = DetectionEngine(replace(defaults, peer=peer))
    shards = _fleet_of_peers(engine)
    found = _newcomer(engine, shards, [(SUCCEEDED, 500.0)] * 30)
    assert found[:4] == [{}] * 4  # fewer than min_executions: not judged
    # HIGH_DURATION (2) from the peers until its baseline covers a day: the run 24 hours after
    # the first; from then on, slow by nature is its normal.
    assert all(2 in f for f in found[4:24]), found
    assert found[24:] == [{}] * 6


@pytest.mark.parametrize(("failed", "flagged"), [(1, False), (2, False), (3, True)])
def test_a_new_pipeline_low_success_rate_needs_evidence(failed: int, flagged: bool) -> None:
    """One failure in its first six runs, against peers that never fail, is not evidence (a
    chance of 6% at the floor of 1% failures); two are not quite (0.15%); three are (0.002%)."""
    engine = DetectionEngine(DetectionSettings())
    shards = _fleet_of_peers(engine)
    runs = [(FAILED, 10.0)] * failed + [(SUCCEEDED, 10.0)] * (6 - failed)
    last = _newcomer(engine, shards, runs)[-1]
    assert (1 in last) is flagged, last


def test_a_flaky_pipeline_needs_a_longer_streak() -> None:
    """Failing 1 run in 10, 3 in a row happen by chance (1 in 1,000 runs); 5 (1 in 100,000)
    do not: its HIGH threshold becomes 5, and CRITICAL 7."""
    runs = [(FAILED if i % 10 == 0 else SUCCEEDED, 10.0, 100) for i in range(100)]
    engine = own("consecutive_failures")
    for fails, severity in [(3, None), (4, None), (5, 2), (7, 3)]:
        shards, p = history(runs + [(FAILED, 10.0, 100)] * fails)
        assert kinds(engine, shards, p, T0).get(STREAK) == severity, fails


def test_a_streak_is_urgent_when_it_crosses_an_alerting_length_since_it_was_judged() -> None:
    """urgent() is asked once per request of every pipeline whose streak grew in it: true when
    the streak crossed 3 or 5 (HIGH and CRITICAL; 5 and 7 for a pipeline that fails 1 run in
    10) since it was last judged, by one failure or by many at once (a runner resending after
    an outage), and even when a success ended it since."""
    engine = own("consecutive_failures")
    steady = [(SUCCEEDED, 10.0, 100)] * 30
    flaky = [(FAILED if i % 10 == 0 else SUCCEEDED, 10.0, 100) for i in range(100)]
    failed, ok = (FAILED, 10.0, 100), (SUCCEEDED, 10.0, 100)
    for past, (high, critical) in [(steady, (3, 5)), (flaky, (5, 7))]:
        for judged in range(0, 9):
            for fails in range(judged + 1, 12):
                # Judged after `judged` failures, then more arrive together.
                shards, p = history(past + [failed] * judged)
                engine.evaluate(p, shards, T0)
                shard = shards.shard_for("p")
                for k in range(judged, fails):
                    shard.apply_terminal(p, _run(p, k, FAILED))
                crossed = judged < high <= fails or judged < critical <= fails
                assert engine.urgent(p) is crossed, (len(past), judged, fails)
                # A success after them in the same request: still urgent, still judged at
                # the streak's peak.
                shard.apply_terminal(p, _run(p, fails, SUCCEEDED))
                assert engine.urgent(p) is crossed, (len(past), judged, fails)
                verdict = kinds(engine, shards, p, T0).get(STREAK)
                expected = 3 if fails >= critical else 2 if fails >= high else None
                assert verdict == expected, (len(past), judged, fails)
                # Judged: nothing is urgent until the streak crosses a threshold again.
                assert not engine.urgent(p)
    _, p = history(steady + [failed] * 3)
    assert not own("volume_drop").urgent(p)
    _, p = history(steady + [failed] * 3 + [ok])
    assert engine.urgent(p)


def _run(p: PipelineState, k: int, status: int) -> Execution:
    """A run of `p` after those in its ring, numbered `k` among them."""
    t = T0 + 10_000 * HOUR + k * HOUR
    return Execution(f"late-{k}", "p", "team", status, t - 10, t, 10.0, 100, (), {}, "", t)


def test_ingest_judges_an_urgent_streak_in_the_request_and_leaves_the_rest_pending() -> None:
    """With detection deferred to passes, the request whose failure makes a streak of 3 hands
    that pipeline to `urgent` (judged at once by the caller) instead of leaving it pending."""
    shards = ShardSet(2, window=64)
    ingestor = Ingestor(
        shards,
        SeenExecutions(1000),
        MemoryLog(),
        IngestLimits(),
        detector=own("consecutive_failures"),
        defer_detection=True,
    )
    judged: list[list[str]] = []

    minutes = itertools.count()

    def send(*runs: tuple[str, str]) -> None:
        raw = request(
            *(run(f"{pid}-{m}", pid, status=status, start=T0 + 60 * m)
              for (pid, status), m in zip(runs, minutes, strict=False))
        )  # fmt: skip
        ingestor.ingest(raw.SerializeToString(), raw)
        urgent = ingestor.take_urgent()
        if urgent:
            judged.append([p.pipeline_id for p in urgent])

    send(("a", "failed"), ("a", "failed"), ("b", "succeeded"))
    assert judged == []
    assert sorted(p.pipeline_id for p in ingestor.take_pending()) == ["a", "b"]
    send(("a", "failed"), ("b", "failed"))
    assert judged == [["a"]]
    assert [p.pipeline_id for p in ingestor.take_pending()] == ["b"]


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


def test_old_runs_still_arriving_are_not_stale_until_they_stop() -> None:
    """A backfill: runs of hours ago, received now. Stale only once nothing has arrived for
    settle_seconds (60 by default), then by the runs' own times."""
    engine = own("staleness")
    shards, p = history(_steady(12), cadence=HOUR)
    last = p.last_time
    assert last is not None
    received = p.last_received = last + 5 * HOUR
    assert kinds(engine, shards, p, received + 1) == {}
    assert engine.due(received + 59) == []
    assert engine.due(received + 61) == ["p"]
    assert kinds(engine, shards, p, received + 61) == {STALE: 1}


def test_stuck_run() -> None:
    engine = own("stuck_run")
    shards, p = history(_steady(12))
    start = (p.last_time or 0) + HOUR
    shards.shard_for("p").apply_running(
        p, Execution("r", "p", "team", RUNNING, start, None, None, 0, (), {}, "", start)
    )
    # Usual (median) duration 97 s: HIGH after 6x that, 582 s (more than the 300 s minimum),
    # CRITICAL after 10x.
    assert kinds(engine, shards, p, start + 580) == {}
    assert engine.due(start + 583) == ["p"]
    assert kinds(engine, shards, p, start + 583) == {STUCK: 2}
    assert kinds(engine, shards, p, start + 1001) == {STUCK: 3}


def test_a_run_of_a_pipeline_that_slowed_down_is_stuck_by_its_latest_runs() -> None:
    """Twelve runs of about 100 s, then four of 500 s (a regression): a run is stuck after 6x
    the latest runs' median (3,000 s), not after 6x the old one (582 s)."""
    engine = own("stuck_run")
    shards, p = history(_steady(12) + [(SUCCEEDED, 500.0, 10_000)] * 4)
    start = (p.last_time or 0) + HOUR
    shards.shard_for("p").apply_running(
        p, Execution("r", "p", "team", RUNNING, start, None, None, 0, (), {}, "", start)
    )
    assert kinds(engine, shards, p, start + 2_990) == {}
    assert kinds(engine, shards, p, start + 3_010) == {STUCK: 2}


async def test_list_anomalies_end_to_end(
    app: App, stub: service_pb2_grpc.PipelineMonitorStub
) -> None:
    # Runs every 6 minutes up to now, by the server's clock (older ones would be stale).
    step = 360.0
    base = time.time() - 8 * step
    healthy = [
        run(f"h{p}-{i}", f"healthy{p}", start=base + i * step) for p in range(4) for i in range(8)
    ]
    failing = [
        run(f"f{i}", "broken", status="failed", start=base + (2 + i) * step) for i in range(6)
    ]
    # The peers first: a streak that crosses a threshold is judged in its request, against
    # the peers judged so far.
    await stub.Ingest(request(*healthy))
    await until(lambda: not app.partition.ingestor.pending)
    await stub.Ingest(request(*failing))
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


def test_a_falling_success_rate_against_its_own_past() -> None:
    """A pipeline that failed 1 run in 100, then 6 of its last 20 (a chance of 1 in 25 million
    at its usual rate): LOW_SUCCESS_RATE, MEDIUM (a fall of 29 points); 10 of 20, HIGH (49
    points); 12, CRITICAL. 3 of 20 (1 in 1,000) is no evidence."""
    past = [(FAILED if i % 100 == 50 else SUCCEEDED, 10.0, 100) for i in range(100)]
    engine = own("success_rate")
    for failed, severity in [(3, None), (6, 1), (10, 2), (12, 3)]:
        recent = [(FAILED, 10.0, 100)] * failed + [(SUCCEEDED, 10.0, 100)] * (20 - failed)
        # Spread the failures so that no streak forms: alternate them with successes.
        recent = [recent[i // 2 + (10 if i % 2 else 0)] for i in range(20)]
        shards, p = history(past + recent)
        assert kinds(engine, shards, p, T0).get(1) == severity, failed
