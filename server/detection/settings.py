"""Detection thresholds: every one configurable under `detection:` in the YAML file."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DetectionSettings",
    "DropSettings",
    "MetricRule",
    "PeerSettings",
    "RegressionSettings",
    "StaleSettings",
    "StreakSettings",
    "StuckSettings",
]


@dataclass(frozen=True)
class MetricRule:
    """How the peer rule judges one aggregate."""

    k: float
    """Flag beyond k population standard deviations from the peers' mean."""
    high_delta: float
    """Deviation above which the anomaly is HIGH; above twice this, CRITICAL."""
    sigma_floor: float
    """σ is raised to this when smaller: absolute for success rate, a fraction of μ otherwise."""


@dataclass(frozen=True)
class PeerSettings:
    """The peer rule of CONTRACT.md section 3."""

    enabled: bool = True
    """Run the peer rule."""
    min_executions: int = 5
    """Pipelines with fewer counted executions are neither judged nor peers."""
    scope: str = "fleet"
    """Who a pipeline's peers are: fleet, team, or label:NAME (pipelines with the same value of
    that label, e.g. label:tier)."""
    window: str = "all"
    """all: all-time aggregates (the seed's); recent: over the ring buffer of recent runs."""
    statistics: str = "mean"
    """mean: mean and population σ (the seed's); robust: median and 1.4826·MAD."""
    success_rate: MetricRule = field(default_factory=lambda: MetricRule(1.0, 0.2, 0.01))
    """Success rate below μ − k·σ."""
    duration: MetricRule = field(default_factory=lambda: MetricRule(2.0, 0.5, 0.01))
    """Average duration above μ + k·σ."""
    records: MetricRule = field(default_factory=lambda: MetricRule(2.0, 0.3, 0.01))
    """Average records below μ − k·σ."""


@dataclass(frozen=True)
class StreakSettings:
    """Failures in a row."""

    enabled: bool = True
    """Run this detector."""
    high: int = 3
    """This many failures in a row is HIGH."""
    critical: int = 5
    """This many is CRITICAL."""


@dataclass(frozen=True)
class RegressionSettings:
    """Recent durations against the pipeline's own baseline."""

    enabled: bool = True
    """Run this detector."""
    recent: int = 3
    """Runs compared against the baseline (their median)."""
    min_baseline: int = 8
    """Runs of baseline needed before judging; until then the peer rule judges."""
    ratio: float = 1.5
    """Flag when the recent median exceeds the baseline median by this factor..."""
    mad_k: float = 4.0
    """...and by this many robust standard deviations (1.4826·MAD) of the baseline."""
    high_ratio: float = 2.0
    """HIGH from this factor."""
    critical_ratio: float = 4.0
    """CRITICAL from this factor."""


@dataclass(frozen=True)
class DropSettings:
    """Recent records processed against the pipeline's own baseline."""

    enabled: bool = True
    """Run this detector."""
    recent: int = 3
    """Runs compared against the baseline (their median)."""
    min_baseline: int = 8
    """Runs of baseline needed before judging."""
    drop: float = 0.5
    """Flag when the recent median is below (1 − drop) of the baseline median..."""
    mad_k: float = 4.0
    """...and this many robust standard deviations below it."""
    high_drop: float = 0.7
    """HIGH from this fall."""
    critical_drop: float = 0.9
    """CRITICAL from this fall."""


@dataclass(frozen=True)
class StaleSettings:
    """No run for several times the learned cadence."""

    enabled: bool = True
    """Run this detector."""
    min_runs: int = 5
    """Runs needed to learn a cadence."""
    factor: float = 3.0
    """Stale after this many cadences without a run (MEDIUM)..."""
    high_factor: float = 6.0
    """...HIGH after this many..."""
    critical_factor: float = 12.0
    """...CRITICAL after this many."""
    min_seconds: float = 300.0
    """Never stale sooner than this after the last run."""


@dataclass(frozen=True)
class StuckSettings:
    """A run RUNNING for several times its pipeline's usual duration."""

    enabled: bool = True
    """Run this detector."""
    min_runs: int = 5
    """Runs with a known duration needed to know what is usual."""
    factor: float = 4.0
    """Stuck after this many usual (median) durations (HIGH)..."""
    mad_k: float = 4.5
    """...and only beyond this many robust standard deviations of its durations (log scale), so
    that a pipeline whose runs vary a lot is given the room they usually take..."""
    critical_factor: float = 10.0
    """...CRITICAL after this many."""
    min_seconds: float = 300.0
    """Never stuck sooner than this after the start."""


@dataclass(frozen=True)
class DetectionSettings:
    """All detectors."""

    enabled: bool = True
    """Run anomaly detection at all."""
    peer: PeerSettings = field(default_factory=PeerSettings)
    """The peer rule."""
    consecutive_failures: StreakSettings = field(default_factory=StreakSettings)
    """Failures in a row."""
    duration_regression: RegressionSettings = field(default_factory=RegressionSettings)
    """Slower than its own past."""
    volume_drop: DropSettings = field(default_factory=DropSettings)
    """Fewer records than its own past."""
    staleness: StaleSettings = field(default_factory=StaleSettings)
    """Gone quiet."""
    stuck_run: StuckSettings = field(default_factory=StuckSettings)
    """A run that does not end."""
