"""The peer rule gives exactly the contract's verdicts: hand-computed expectations, the σ floor
and every severity boundary of the peer rule as documented in docs/detection.md."""

from __future__ import annotations

import math

import pytest

from pipewarden.server.core.model import FAILED, SUCCEEDED, Execution
from pipewarden.server.core.shards import PipelineState, ShardSet
from pipewarden.server.detection.peer import CRITICAL, HIGH, MEDIUM, PeerDetector
from pipewarden.server.detection.settings import PeerSettings

T0 = 1_780_000_000.0
RATE, DURATION, RECORDS = 1, 2, 3


def pipeline(
    shards: ShardSet,
    pid: str,
    ok: int,
    bad: int,
    duration: float = 60.0,
    records: int = 1000,
    team: str = "t",
) -> PipelineState:
    state = shards.create(pid, team)
    for i in range(ok + bad):
        status = SUCCEEDED if i < ok else FAILED
        t = T0 + i
        e = Execution(
            f"{pid}-{i}", pid, team, status, t - duration, t, duration, records, (), {}, "", t
        )
        shards.shard_for(pid).apply_terminal(state, e)
    return state


def judge(
    fleet: list[tuple[int, int, float, int]],
    target: tuple[int, int, float, int],
    settings: PeerSettings | None = None,
) -> dict[int, tuple[int, float, float]]:
    """Verdicts on `target` against peers `fleet`: kind -> (severity, observed, expected)."""
    shards = ShardSet(4, window=64)
    detector = PeerDetector(settings or PeerSettings())
    for i, (ok, bad, duration, records) in enumerate(fleet):
        detector.update(pipeline(shards, f"peer{i}", ok, bad, duration, records))
    ok, bad, duration, records = target
    subject = pipeline(shards, "subject", ok, bad, duration, records)
    return {
        a.kind: (a.severity, a.observed, a.expected) for a in detector.evaluate(subject, shards, T0)
    }


PERFECT = [(10, 0, 100.0, 1000)] * 3  # three healthy peers: σ = 0 everywhere


@pytest.mark.parametrize(
    ("ok", "bad", "severity"),
    [
        (10, 0, None),  # equal to its peers
        (199, 1, None),  # 0.995: above μ − 1·max(σ, 0.01) = 0.99
        (49, 1, MEDIUM),  # 0.98: flagged, d = 0.02
        (8, 2, MEDIUM),  # 0.8: d = 0.2 is not above high_delta 0.2
        (15, 5, HIGH),  # 0.75: d = 0.25
        (6, 4, HIGH),  # 0.6: d = 0.4 is not above 2·high_delta
        (11, 9, CRITICAL),  # 0.55: d = 0.45
    ],
)
def test_success_rate_against_perfect_peers_uses_the_sigma_floor(
    ok: int, bad: int, severity: int | None
) -> None:
    verdicts = judge(PERFECT, (ok, bad, 100.0, 1000))
    if severity is None:
        assert RATE not in verdicts
    else:
        assert verdicts[RATE] == (severity, pytest.approx(ok / (ok + bad)), pytest.approx(1.0))


def test_success_rate_with_spread_peers_uses_their_population_sigma() -> None:
    # Peers 1.0, 0.9, 0.8: μ = 0.9, population σ = sqrt(0.02 / 3) = 0.08165; threshold 0.81835.
    fleet = [(10, 0, 100.0, 1000), (9, 1, 100.0, 1000), (8, 2, 100.0, 1000)]
    assert RATE not in judge(fleet, (82, 18, 100.0, 1000))  # 0.82 is above the threshold
    severity, observed, expected = judge(fleet, (81, 19, 100.0, 1000))[RATE]  # 0.81
    assert (severity, observed, expected) == (MEDIUM, pytest.approx(0.81), pytest.approx(0.9))


@pytest.mark.parametrize(
    ("duration", "severity"),
    [
        (102.0, None),  # μ + 2·max(σ, 1% of μ) = 102: not above it
        (103.0, MEDIUM),  # d = 0.03
        (150.0, MEDIUM),  # d = 0.5 is not above high_delta 0.5
        (151.0, HIGH),
        (200.0, HIGH),  # d = 1.0 is not above 2·high_delta
        (201.0, CRITICAL),
    ],
)
def test_average_duration_boundaries(duration: float, severity: int | None) -> None:
    verdicts = judge(PERFECT, (10, 0, duration, 1000))
    if severity is None:
        assert DURATION not in verdicts
    else:
        assert verdicts[DURATION] == (severity, pytest.approx(duration), pytest.approx(100.0))


@pytest.mark.parametrize(
    ("records", "severity"),
    [
        (980, None),  # μ − 2·max(σ, 1% of μ) = 980: not below it
        (979, MEDIUM),
        (700, MEDIUM),  # d = 0.3 is not above high_delta 0.3
        (690, HIGH),
        (400, HIGH),  # d = 0.6 is not above 2·high_delta
        (399, CRITICAL),
    ],
)
def test_average_records_boundaries(records: int, severity: int | None) -> None:
    verdicts = judge(PERFECT, (10, 0, 100.0, records))
    if severity is None:
        assert RECORDS not in verdicts
    else:
        assert verdicts[RECORDS] == (severity, pytest.approx(records), pytest.approx(1000.0))


def test_duration_sigma_above_the_floor() -> None:
    # Peers 80, 100, 120 s: μ = 100, σ = sqrt(800 / 3) = 16.33; threshold μ + 2σ = 132.66.
    fleet = [(10, 0, 80.0, 1000), (10, 0, 100.0, 1000), (10, 0, 120.0, 1000)]
    assert DURATION not in judge(fleet, (10, 0, 132.0, 1000))
    severity, _, expected = judge(fleet, (10, 0, 133.0, 1000))[DURATION]
    assert severity == MEDIUM and expected == pytest.approx(100.0)
    assert math.isclose(100 + 2 * math.sqrt(800 / 3), 132.66, abs_tol=0.01)


def test_leave_one_out_and_min_executions() -> None:
    # Four executions do not qualify: the subject is not judged, and is nobody's peer.
    assert judge(PERFECT, (2, 2, 500.0, 10)) == {}
    # Without the subject in its own peer group, a lone outlier is judged against the others
    # only (including it would pull μ towards it and hide it).
    verdicts = judge(PERFECT, (5, 5, 100.0, 1000))
    assert verdicts[RATE][2] == pytest.approx(1.0)
    # No peers at all: no verdict.
    assert judge([], (5, 5, 100.0, 1000)) == {}


def test_team_scope_compares_within_the_team() -> None:
    shards = ShardSet(4, window=64)
    detector = PeerDetector(PeerSettings(scope="team"))
    for i in range(2):
        detector.update(pipeline(shards, f"slow{i}", 10, 0, duration=3600.0, team="batch"))
    for i in range(20):
        detector.update(pipeline(shards, f"fast{i}", 10, 0, duration=10.0, team="stream"))
    subject = pipeline(shards, "subject", 10, 0, duration=3600.0, team="batch")
    # Slow, but not slower than its own team: no verdict. In the fleet, against 2 slow and 20
    # fast peers (μ = 336 s, σ = 1,032 s), it is flagged: slow by nature looks broken there.
    assert detector.evaluate(subject, shards, T0) == []
    fleet_wide = PeerDetector(PeerSettings())
    for p in shards.pipelines():
        fleet_wide.update(p)
    assert [a.kind for a in fleet_wide.evaluate(subject, shards, T0)] == [DURATION]


def test_robust_statistics_ignore_an_outlier_peer() -> None:
    # One wild peer inflates the mean and σ so much that a real outlier hides; the median and
    # MAD do not move.
    fleet = [(10, 0, 100.0, 1000)] * 6 + [(10, 0, 100_000.0, 1000)]
    assert DURATION not in judge(fleet, (10, 0, 400.0, 1000))
    robust = judge(fleet, (10, 0, 400.0, 1000), PeerSettings(statistics="robust"))
    assert robust[DURATION][0] == CRITICAL and robust[DURATION][2] == pytest.approx(100.0)
