"""A pipeline against its own history: failures in a row, slower runs, fewer records.

Baselines are medians of the ring buffer of recent runs, with a robust spread (Tukey's biweight
midvariance, see `spread`), so one odd run moves neither the baseline nor the verdict (a
regression needs the median of the latest runs to move). Durations and records are judged on a
log scale: their noise is proportional to their size (a two-hour job varies by minutes, a
ten-second one by a second), so a spread measured in seconds would understate a skewed
distribution. Baseline statistics are cached per pipeline and refreshed every few runs: they
move slowly, and sorting on every run would cost more than all the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipewarden.names import (
    CONSECUTIVE_FAILURES,
    CRITICAL,
    DURATION_REGRESSION,
    HIGH,
    LOW_SUCCESS_RATE,
    MEDIUM,
    VOLUME_DROP,
)
from pipewarden.server.core.detect import Anomaly
from pipewarden.server.core.model import FAILED, SUCCEEDED
from pipewarden.server.core.shards import PipelineState
from pipewarden.server.detection.profile import offsets, started
from pipewarden.server.detection.settings import (
    DropSettings,
    ProfileSettings,
    RegressionSettings,
    StreakSettings,
    SuccessRateSettings,
)

__all__ = [
    "Baseline",
    "Recent",
    "RegressionDetector",
    "StreakDetector",
    "SuccessRateDetector",
    "VolumeDropDetector",
    "binomial_tail",
    "median",
    "spread",
    "widened",
]

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
    """Biweight midvariance of log(1 + value) (see `spread`): a robust standard deviation."""
    runs: int
    at_count: int
    """The ring's fill count... and position when computed, to know when to refresh."""


def spread(values: list[float], mid: float) -> float:
    """A robust standard deviation of `values` around their median `mid`: Tukey's biweight
    midvariance (c = 9). As robust as 1.4826·MAD (a value beyond 9 MADs has no weight), but
    about 87% as efficient as the standard deviation on normal noise where the MAD is 37%: from
    the 10 to 30 runs of a daily pipeline's baseline the MAD comes out at half the real spread
    or less often enough to turn a fleet's ordinary streaks of slow runs into regressions."""
    deviations = [v - mid for v in values]
    mad = median([abs(d) for d in deviations])
    if mad <= 0:
        return 0.0
    scale = 9.0 * mad
    num = den = 0.0
    for d in deviations:
        u2 = (d / scale) ** 2
        if u2 < 1.0:
            w = 1.0 - u2
            num += d * d * w**4
            den += w * (1.0 - 5.0 * u2)
    # den > 0: at least half the values lie within one MAD (u² ≤ 1/81, each adding > 0.92) and
    # none can subtract more than 0.8.
    return math.sqrt(len(values) * num) / den


def _succeeded(p: PipelineState, durations: bool) -> list[tuple[float, float]]:
    """(start time, value) of the successful runs in the ring, oldest first."""
    ring = p.ring
    status, times, lengths = ring.status, ring.time, ring.duration
    values = lengths if durations else ring.records
    out: list[tuple[float, float]] = []
    for i in ring.indices():
        if status[i] == SUCCEEDED:
            v = values[i]
            if v == v:  # not NaN
                out.append((started(times[i], lengths[i]), float(v)))
    return out


def _last_succeeded(p: PipelineState, durations: bool, n: int) -> list[tuple[float, float]]:
    """(start time, value) of the latest `n` (or fewer) successful runs, newest first."""
    ring = p.ring
    size = len(ring.status)
    status, times, lengths = ring.status, ring.time, ring.duration
    values = lengths if durations else ring.records
    out: list[tuple[float, float]] = []
    for k in range(ring.count):
        i = (ring.position - 1 - k) % size
        if status[i] == SUCCEEDED:
            v = values[i]
            if v == v:
                out.append((started(times[i], lengths[i]), float(v)))
                if len(out) == n:
                    break
    return out


def widened(k: float, runs: int) -> float:
    """`k` standard deviations, widened as Student's t widens the normal's quantile when σ is
    estimated from `runs` values (Cornish-Fisher, two terms): a baseline of 8 runs knows its
    spread far less well than one of 60. 4 becomes 7.7 for 8 runs, 4.9 for 24, 4.3 for 60."""
    nu = max(runs - 1, 1)
    return k + (k**3 + k) / (4 * nu) + (5 * k**5 + 16 * k**3 + 3 * k) / (96 * nu * nu)


class StreakDetector:
    """Failures in a row: HIGH from `high`, CRITICAL from `critical`.

    A streak is judged at its peak since it was last judged (`PipelineState.peak_failures`),
    so one that grows past a threshold and ends before detection looks (a runner resending
    its failures and the success after them in one request) still alerts, at the highest
    threshold it crossed; the alert then resolves with the success already in.
    """

    def __init__(self, settings: StreakSettings) -> None:
        self.settings = settings

    def evaluate(self, p: PipelineState) -> Anomaly | None:
        """The verdict on the longest streak since the last judgement (the caller marks it
        judged: `PipelineState.streak_judged`)."""
        now = p.consecutive_failures
        n = max(now, p.peak_failures)
        high, critical = self.thresholds(p, n)
        if n < high:
            return None
        severity = CRITICAL if n >= critical else HIGH
        error = f"; last error: {p.last_error[:200]}" if p.last_error else ""
        ended = ""
        after = 0
        if n > now:
            after = _runs_since_streak(p)
            ended = f", ended by a success since ({now} now)"
        return Anomaly(
            p.pipeline_id,
            p.team,
            CONSECUTIVE_FAILURES,
            severity,
            f"{n} failures in a row (alerting from {high}){ended}{error}",
            float(n),
            float(high),
            "runs",
            after_runs=after,
        )

    def thresholds(self, p: PipelineState, streak: int | None = None) -> tuple[int, int]:
        """The streaks that are HIGH and CRITICAL for this pipeline: the settings', or longer
        for a pipeline whose own failure rate makes such a streak unremarkable. Its failure
        rate is that of its runs outside `streak` (default: its current streak)."""
        s = self.settings
        if streak is None:
            streak = p.consecutive_failures
        streak = min(streak, p.failed)
        judged = p.succeeded + p.failed - streak
        if s.max_chance <= 0 or judged < s.min_history:
            return s.high, s.critical
        rate = (p.failed - streak) / judged
        if rate <= 0:
            return s.high, s.critical
        # The shortest streak at most max_chance likely: rate ** k <= max_chance.
        needed = math.ceil(math.log(s.max_chance) / math.log(rate) - 1e-9) if rate < 1 else 10**9
        high = max(s.high, needed)
        return high, max(s.critical, high + s.critical - s.high)


def _runs_since_streak(p: PipelineState) -> int:
    """Runs since the last failure of the streak that a success ended (at least 1): the runs
    its alert has been clear for already."""
    ring = p.ring
    size = len(ring.status)
    ended = False
    for k in range(ring.count):
        status = ring.status[(ring.position - 1 - k) % size]
        if status == SUCCEEDED:
            ended = True
        elif status == FAILED and ended:
            return k
    return max(ring.count, 1)


class SuccessRateDetector:
    """The success rate of the latest runs against the pipeline's own long-run rate: a slowly
    rising failure rate that never fails enough runs in a row for the streak detector."""

    def __init__(self, settings: SuccessRateSettings) -> None:
        self.settings = settings

    def has_baseline(self, p: PipelineState) -> bool:
        """Whether the pipeline has run enough to know its usual rate."""
        s = self.settings
        return p.succeeded + p.failed >= s.recent + s.min_baseline

    def evaluate(self, p: PipelineState) -> Anomaly | None:
        """The verdict on the latest runs."""
        s = self.settings
        if not self.has_baseline(p):
            return None
        ring = p.ring
        size = len(ring.status)
        judged = failed = 0
        for k in range(ring.count):
            status = ring.status[(ring.position - 1 - k) % size]
            if status in (SUCCEEDED, FAILED):
                judged += 1
                failed += status == FAILED
                if judged == s.recent:
                    break
        before = p.succeeded + p.failed - judged
        if judged < s.recent or failed == 0 or before < s.min_baseline:
            return None
        usual = (p.failed - failed) / before
        fall = failed / judged - usual
        if fall < s.drop:
            return None
        if binomial_tail(judged, failed, max(usual, 0.01)) > s.max_chance:
            return None
        severity = CRITICAL if fall >= s.critical_drop else HIGH if fall >= s.high_drop else MEDIUM
        rate, usual_rate = 1 - failed / judged, 1 - usual
        return Anomaly(
            p.pipeline_id,
            p.team,
            LOW_SUCCESS_RATE,
            severity,
            f"{failed} of its last {judged} runs failed: a success rate of {rate:.0%}, against "
            f"its usual {usual_rate:.1%} (over {before} runs before them)",
            rate,
            usual_rate,
            "ratio",
        )


def binomial_tail(n: int, k: int, q: float) -> float:
    """P(X >= k) for X ~ Binomial(n, q)."""
    if k <= 0:
        return 1.0
    if q <= 0:
        return 0.0
    if q >= 1:
        return 1.0
    return sum(math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k, n + 1))


@dataclass(slots=True)
class Recent:
    """The latest runs against the baseline, net of the pipeline's weekly profile."""

    base: Baseline
    deviation: float
    """Median of the latest runs' log values net of their seasonal offsets, minus the baseline's
    median: how far above (or below) usual they are, in log(1 + value)."""
    observed: float
    """Median of the latest runs' values."""
    expected: float
    """What the latest runs would usually be at their times of the week."""


class _OwnHistory:
    """Recent runs' median against the baseline of the runs before them, each run taken net of
    its seasonal offset (see server.detection.profile) when profiles are on."""

    durations = True

    def __init__(self, recent: int, min_baseline: int, profile: ProfileSettings) -> None:
        self.recent = recent
        self.min_baseline = min_baseline
        self.profile = profile
        self._baselines: dict[str, Baseline] = {}

    def has_baseline(self, p: PipelineState) -> bool:
        """Whether the pipeline has enough history to be judged against itself: enough runs,
        over at least a day (or a full ring), since a pipeline's first hours do not show its
        daily cycle."""
        ring = p.ring
        if ring.count < self.recent + self.min_baseline:
            return False
        size = len(ring.status)
        if ring.count == size:
            return True
        return ring.time[ring.position - 1] - ring.time[0] >= 86400.0

    def _net(self, p: PipelineState, runs: list[tuple[float, float]]) -> list[float]:
        """log(1 + value) of each run, net of its seasonal offset."""
        if not self.profile.enabled or p.profile is None:
            return [math.log1p(max(v, 0.0)) for _, v in runs]
        shifts = offsets(p, [t for t, _ in runs], self.durations, self.profile)
        return [math.log1p(max(v, 0.0)) - s for (_, v), s in zip(runs, shifts, strict=True)]

    def split(self, p: PipelineState) -> Recent | None:
        """The baseline (cached) and the latest runs against it; None without enough
        history."""
        if not self.has_baseline(p):
            return None
        cached = self._baselines.get(p.pipeline_id)
        total = p.total
        # Refreshed every few runs; sooner while the baseline is short and each run changes it.
        if cached is None or total - cached.at_count >= min(REFRESH_EVERY, 1 + cached.runs // 4):
            runs = _succeeded(p, self.durations)
            if len(runs) < self.recent + self.min_baseline:
                return None
            base = self._net(p, runs[: -self.recent])
            mid = median(base)
            cached = Baseline(mid, spread(base, mid), len(base), total)
            self._baselines[p.pipeline_id] = cached
        latest = _last_succeeded(p, self.durations, self.recent)
        if len(latest) < self.recent:
            return None
        deviation = median(self._net(p, latest)) - cached.median
        observed_log = median([math.log1p(max(v, 0.0)) for _, v in latest])
        return Recent(
            cached, deviation, math.expm1(observed_log), math.expm1(observed_log - deviation)
        )


class RegressionDetector(_OwnHistory):
    """Durations of recent successful runs against the pipeline's own baseline."""

    durations = True

    def __init__(self, settings: RegressionSettings, profile: ProfileSettings) -> None:
        super().__init__(settings.recent, settings.min_baseline, profile)
        self.settings = settings

    def evaluate(self, p: PipelineState) -> Anomaly | None:
        """The regression's verdict."""
        found = self.split(p)
        if found is None or found.expected <= 0:
            return None
        s = self.settings
        ratio = found.observed / found.expected
        if (
            ratio < s.ratio
            or found.deviation < widened(s.mad_k, found.base.runs) * found.base.spread
        ):
            return None
        severity = (
            CRITICAL if ratio >= s.critical_ratio else HIGH if ratio >= s.high_ratio else MEDIUM
        )
        return Anomaly(
            p.pipeline_id,
            p.team,
            DURATION_REGRESSION,
            severity,
            f"the last {s.recent} successful runs took {_secs(found.observed)} (median), "
            f"{ratio:.1f}x the usual {_secs(found.expected)} for their time of the week "
            f"(from {found.base.runs} runs before them)",
            found.observed,
            found.expected,
            "seconds",
        )


class VolumeDropDetector(_OwnHistory):
    """Records of recent successful runs against the pipeline's own baseline."""

    durations = False

    def __init__(self, settings: DropSettings, profile: ProfileSettings) -> None:
        super().__init__(settings.recent, settings.min_baseline, profile)
        self.settings = settings

    def evaluate(self, p: PipelineState) -> Anomaly | None:
        """The drop's verdict."""
        found = self.split(p)
        if found is None or found.expected <= 0:
            return None
        s = self.settings
        fall = 1 - found.observed / found.expected
        if (
            fall < s.drop
            or -found.deviation < widened(s.mad_k, found.base.runs) * found.base.spread
        ):
            return None
        severity = CRITICAL if fall >= s.critical_drop else HIGH if fall >= s.high_drop else MEDIUM
        return Anomaly(
            p.pipeline_id,
            p.team,
            VOLUME_DROP,
            severity,
            f"the last {s.recent} successful runs processed {found.observed:,.0f} records "
            f"(median), {fall:.0%} below the usual {found.expected:,.0f} for their time of the "
            f"week (from {found.base.runs} runs before them)",
            found.observed,
            found.expected,
            "records",
        )


def _secs(s: float) -> str:
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"
