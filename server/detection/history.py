"""A pipeline against its own history: failures in a row, slower runs, fewer records.

Baselines are medians of the ring buffer of recent runs, with the median absolute deviation as
their spread, so one odd run moves neither the baseline nor the verdict (a regression needs the
median of the latest runs to move). Durations and records are judged on a log scale: their noise
is proportional to their size (a two-hour job varies by minutes, a ten-second one by a second),
so a spread measured in seconds would understate a skewed distribution. Baseline statistics are
cached per pipeline and refreshed every few runs: they move slowly, and sorting on every run
would cost more than all the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from server.detect import Anomaly
from server.detection.settings import DropSettings, RegressionSettings, StreakSettings
from server.model import SUCCEEDED
from server.shards import PipelineState

__all__ = ["Baseline", "RegressionDetector", "StreakDetector", "VolumeDropDetector", "median"]

MEDIUM, HIGH, CRITICAL = 1, 2, 3
CONSECUTIVE_FAILURES, DURATION_REGRESSION, VOLUME_DROP = 4, 5, 6
REFRESH_EVERY = 16  # runs between recomputations of a pipeline's baseline


def median(values: list[float]) -> float:
    """The median of a non-empty list (sorted here)."""
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@dataclass(slots=True)
class Baseline:
    """A pipeline's usual value, and how much it usually varies, on a log scale."""

    median: float
    """Median of log(1 + value)."""
    spread: float
    """1.4826 · MAD of log(1 + value): a robust standard deviation."""
    runs: int
    at_count: int
    """The ring's fill count... and position when computed, to know when to refresh."""


def _succeeded(p: PipelineState, durations: bool) -> list[float]:
    ring = p.ring
    out: list[float] = []
    for i in ring.indices():
        if ring.status[i] != SUCCEEDED:
            continue
        if durations:
            d = ring.duration[i]
            if not math.isnan(d):
                out.append(d)
        else:
            out.append(float(ring.records[i]))
    return out


def _last_succeeded(p: PipelineState, durations: bool, n: int) -> list[float]:
    """The latest `n` (or fewer) values of successful runs, newest first."""
    ring = p.ring
    size = len(ring.status)
    out: list[float] = []
    for k in range(ring.count):
        i = (ring.position - 1 - k) % size
        if ring.status[i] != SUCCEEDED:
            continue
        if durations:
            d = ring.duration[i]
            if math.isnan(d):
                continue
            out.append(d)
        else:
            out.append(float(ring.records[i]))
        if len(out) == n:
            break
    return out


class StreakDetector:
    """Failures in a row: HIGH at `high`, CRITICAL at `critical`."""

    def __init__(self, settings: StreakSettings) -> None:
        self.settings = settings

    def evaluate(self, p: PipelineState) -> Anomaly | None:
        """The streak's verdict."""
        n = p.consecutive_failures
        s = self.settings
        if n < s.high:
            return None
        severity = CRITICAL if n >= s.critical else HIGH
        error = f"; last error: {p.last_error[:200]}" if p.last_error else ""
        return Anomaly(
            p.pipeline_id,
            p.team,
            CONSECUTIVE_FAILURES,
            severity,
            f"{n} failures in a row (alerting from {s.high}){error}",
            float(n),
            0.0,
            "runs",
        )


class _OwnHistory:
    """Recent runs' median against the baseline of the runs before them."""

    durations = True

    def __init__(self, recent: int, min_baseline: int) -> None:
        self.recent = recent
        self.min_baseline = min_baseline
        self._baselines: dict[str, Baseline] = {}

    def has_baseline(self, p: PipelineState) -> bool:
        """Whether the pipeline has enough history to be judged against itself."""
        return p.ring.count >= self.recent + self.min_baseline

    def split(self, p: PipelineState) -> tuple[Baseline, float] | None:
        """The baseline (cached) and the recent median, or None without enough history."""
        if not self.has_baseline(p):
            return None
        cached = self._baselines.get(p.pipeline_id)
        total = p.total
        if cached is not None and total - cached.at_count < REFRESH_EVERY:
            latest = _last_succeeded(p, self.durations, self.recent)
            if len(latest) < self.recent:
                return None
            return cached, median([math.log1p(max(v, 0.0)) for v in latest])
        values = [math.log1p(max(v, 0.0)) for v in _succeeded(p, self.durations)]
        if len(values) < self.recent + self.min_baseline:
            return None
        base = values[: -self.recent]
        mid = median(base)
        spread = 1.4826 * median([abs(v - mid) for v in base])
        cached = Baseline(mid, spread, len(base), total)
        self._baselines[p.pipeline_id] = cached
        return cached, median(values[-self.recent :])


class RegressionDetector(_OwnHistory):
    """Durations of recent successful runs against the pipeline's own baseline."""

    durations = True

    def __init__(self, settings: RegressionSettings) -> None:
        super().__init__(settings.recent, settings.min_baseline)
        self.settings = settings

    def evaluate(self, p: PipelineState) -> Anomaly | None:
        """The regression's verdict."""
        found = self.split(p)
        if found is None:
            return None
        base, recent_log = found
        s = self.settings
        usual, recent = math.expm1(base.median), math.expm1(recent_log)
        if usual <= 0:
            return None
        ratio = recent / usual
        if ratio < s.ratio or recent_log - base.median < s.mad_k * base.spread:
            return None
        severity = (
            CRITICAL if ratio >= s.critical_ratio else HIGH if ratio >= s.high_ratio else MEDIUM
        )
        return Anomaly(
            p.pipeline_id,
            p.team,
            DURATION_REGRESSION,
            severity,
            f"the last {s.recent} successful runs took {_secs(recent)} (median), {ratio:.1f}x "
            f"its usual {_secs(base.median)} (median of {base.runs} runs before them)",
            recent,
            base.median,
            "seconds",
        )


class VolumeDropDetector(_OwnHistory):
    """Records of recent successful runs against the pipeline's own baseline."""

    durations = False

    def __init__(self, settings: DropSettings) -> None:
        super().__init__(settings.recent, settings.min_baseline)
        self.settings = settings

    def evaluate(self, p: PipelineState) -> Anomaly | None:
        """The drop's verdict."""
        found = self.split(p)
        if found is None:
            return None
        base, recent_log = found
        s = self.settings
        usual, recent = math.expm1(base.median), math.expm1(recent_log)
        if usual <= 0:
            return None
        fall = 1 - recent / usual
        if fall < s.drop or base.median - recent_log < s.mad_k * base.spread:
            return None
        severity = CRITICAL if fall >= s.critical_drop else HIGH if fall >= s.high_drop else MEDIUM
        return Anomaly(
            p.pipeline_id,
            p.team,
            VOLUME_DROP,
            severity,
            f"the last {s.recent} successful runs processed {recent:,.0f} records (median), "
            f"{fall:.0%} below its usual {base.median:,.0f} (median of {base.runs} runs before "
            "them)",
            recent,
            base.median,
            "records",
        )


def _secs(s: float) -> str:
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"
