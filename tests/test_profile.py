"""Each pipeline's weekly profile: a quiet weekend is not a drop, a quiet Tuesday is."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipewarden.server.core.model import SUCCEEDED, Execution
from pipewarden.server.core.shards import PipelineState, Shard, ShardSet
from pipewarden.server.detection.engine import DetectionEngine
from pipewarden.server.detection.profile import fold, offset
from pipewarden.server.detection.settings import DetectionSettings

MONDAY = 1_704_067_200.0  # 2024-01-01 00:00 UTC
HOUR, DAY = 3600.0, 86400.0
DROP = 6


def _records(t: float, weekend: float) -> int:
    day = int((t - MONDAY) // DAY) % 7
    wobble = 1 + 0.05 * ((int(t // HOUR) * 7919) % 11 - 5) / 5  # ±5%, deterministic
    return int(10_000 * (weekend if day >= 5 else 1.0) * wobble)


def _run(shards: ShardSet, p: PipelineState, k: int, t: float, records: int) -> None:
    e = Execution(f"r{k}", p.pipeline_id, "t", SUCCEEDED, t - 60, t, 60.0, records, (), {}, "", t)
    Shard.apply_terminal(p, e)


def _hourly(
    engine: DetectionEngine, until: float, weekend: float = 0.3, drop_from: float = float("inf")
) -> tuple[ShardSet, PipelineState, set[float]]:
    """An hourly pipeline processing `weekend` of its weekday records at weekends, evaluated
    after every run; the times at which a DROP was found."""
    shards = ShardSet(1, window=64)
    p = shards.create("p", "t")
    flagged: set[float] = set()
    t, k = MONDAY + 1800, 0
    while t < until:
        records = _records(t, weekend)
        if t >= drop_from:
            records //= 10
        _run(shards, p, k, t, records)
        if any(a.kind == DROP for a in engine.evaluate(p, shards, t)):
            flagged.add(t)
        t, k = t + HOUR, k + 1
    return shards, p, flagged


def test_a_quiet_weekend_is_learned_not_flagged() -> None:
    engine = DetectionEngine(DetectionSettings(), enabled=["volume_drop"])
    # Two weeks to learn, then the third weekend is judged.
    _, p, flagged = _hourly(engine, MONDAY + 21 * DAY)
    third_weekend = [t for t in flagged if t >= MONDAY + 19 * DAY]
    assert third_weekend == []
    weekend_hour = MONDAY + 19 * DAY + 14 * HOUR
    assert offset(p, weekend_hour, False, DetectionSettings().profile) == pytest.approx(
        -0.85, abs=0.25
    )  # log(0.3) = -1.2 against a mean that is 2/7 weekend


def test_without_the_profile_every_weekend_is_a_drop() -> None:
    defaults = DetectionSettings()
    settings = replace(defaults, profile=replace(defaults.profile, enabled=False))
    engine = DetectionEngine(settings, enabled=["volume_drop"])
    _, _, flagged = _hourly(engine, MONDAY + 21 * DAY)
    assert [t for t in flagged if t >= MONDAY + 19 * DAY]


def test_a_drop_on_a_weekday_is_still_found() -> None:
    engine = DetectionEngine(DetectionSettings(), enabled=["volume_drop"])
    tuesday = MONDAY + 15 * DAY + 9 * HOUR
    _, _, flagged = _hourly(engine, tuesday + 6 * HOUR, drop_from=tuesday)
    assert flagged and min(flagged) <= tuesday + 4 * HOUR  # the third or fourth low run


def test_runs_are_learned_only_once_newer_ones_have_arrived() -> None:
    settings = DetectionSettings().profile
    shards = ShardSet(1, window=64)
    p = shards.create("p", "t")
    for k in range(settings.lag + 3):
        _run(shards, p, k, MONDAY + k * HOUR, 1000)
    fold(p, settings)
    assert p.profile_at == 3  # the latest `lag` runs wait
    fold(p, settings)
    assert p.profile_at == 3  # and nothing is learned twice


def test_the_profile_is_in_the_snapshot() -> None:
    engine = DetectionEngine(DetectionSettings(), enabled=["volume_drop"])
    shards, p, _ = _hourly(engine, MONDAY + 9 * DAY)
    assert p.profile is not None
    restored = ShardSet(1, window=64)
    restored.restore(shards.dump())
    q = restored.get("p")
    assert q is not None and q.profile is not None
    assert q.profile.tobytes() == p.profile.tobytes()
    assert q.profile_at == p.profile_at > 0
