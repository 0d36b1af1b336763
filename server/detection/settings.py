"""Detection thresholds: every one configurable under `detection:` in the YAML file."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DetectionSettings",
    "DropSettings",
    "MetricRule",
    "PeerSettings",
    "ProfileSettings",
    "RegressionSettings",
    "StaleSettings",
    "StreakSettings",
    "StuckSettings",
    "SuccessRateSettings",
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
    new_pipelines: bool = True
    """With every detector on: judge a pipeline by this verdict while it has no baseline of its
    own (once it has one, its own history judges it). Off by default for duration and records:
    in a fleet of pipelines of every size, a new pipeline that is slow or small by nature is
    not broken; turn it on when peers are scoped to alike pipelines (`scope: label:NAME`)."""


@dataclass(frozen=True)
class PeerSettings:
    """The peer rule: each pipeline against the mean and standard deviation of its peers
    (see detection/peer.py)."""

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
    duration: MetricRule = field(
        default_factory=lambda: MetricRule(2.0, 0.5, 0.01, new_pipelines=False)
    )
    """Average duration above μ + k·σ."""
    records: MetricRule = field(
        default_factory=lambda: MetricRule(2.0, 0.3, 0.01, new_pipelines=False)
    )
    """Average records below μ − k·σ."""
    new_pipeline_max_chance: float = 1e-4
    """With every detector on, a new pipeline's low success rate stands only when that many
    failures in that few runs would be at most this likely at its peers' success rate (one
    failure in its first six runs is not evidence of anything)."""


@dataclass(frozen=True)
class StreakSettings:
    """Failures in a row."""

    enabled: bool = True
    """Run this detector."""
    high: int = 3
    """This many failures in a row is HIGH."""
    critical: int = 5
    """This many is CRITICAL."""
    max_chance: float = 1e-5
    """...when a streak that long is at most this likely for the pipeline: its own failure rate
    before the streak, to the power of the streak's length. So a pipeline that fails one run in
    twenty alerts from 4 in a row, and one that fails one in a hundred from 3. 0: off."""
    min_history: int = 20
    """Runs of its own needed before its failure rate is trusted for that."""


@dataclass(frozen=True)
class SuccessRateSettings:
    """The success rate of the latest runs against the pipeline's own past."""

    enabled: bool = True
    """Run this detector."""
    recent: int = 20
    """Latest succeeded or failed runs judged (from the ring buffer)."""
    min_baseline: int = 20
    """Runs before them needed to know the pipeline's usual rate."""
    max_chance: float = 1e-6
    """Flag when that many failures in the latest runs would be at most this likely at the
    pipeline's usual failure rate (floored at 1%): small, because every pipeline is judged
    after every run..."""
    drop: float = 0.15
    """...and the success rate fell by at least this much."""
    high_drop: float = 0.3
    """HIGH from this fall."""
    critical_drop: float = 0.5
    """CRITICAL from this fall."""


@dataclass(frozen=True)
class RegressionSettings:
    """Recent durations against the pipeline's own baseline."""

    enabled: bool = True
    """Run this detector."""
    recent: int = 4
    """Runs compared against the baseline (their median)."""
    min_baseline: int = 8
    """Runs of baseline needed before judging; until then the peer rule judges."""
    ratio: float = 1.5
    """Flag when the recent median exceeds the baseline median by this factor..."""
    mad_k: float = 3.5
    """...and by this many robust standard deviations (the biweight midvariance) of the baseline
    (more for a baseline of few runs, as Student's t widens the normal's quantile)."""
    high_ratio: float = 2.0
    """HIGH from this factor."""
    critical_ratio: float = 4.0
    """CRITICAL from this factor."""


@dataclass(frozen=True)
class DropSettings:
    """Recent records processed against the pipeline's own baseline."""

    enabled: bool = True
    """Run this detector."""
    recent: int = 4
    """Runs compared against the baseline (their median)."""
    min_baseline: int = 8
    """Runs of baseline needed before judging."""
    drop: float = 0.5
    """Flag when the recent median is below (1 − drop) of the baseline median..."""
    mad_k: float = 4.0
    """...and this many robust standard deviations below it (more for a baseline of few
    runs)."""
    high_drop: float = 0.7
    """HIGH from this fall."""
    critical_drop: float = 0.9
    """CRITICAL from this fall."""


@dataclass(frozen=True)
class ProfileSettings:
    """Each pipeline's weekly profile, which regression and drop judge runs net of."""

    enabled: bool = True
    """Learn profiles and judge durations and records net of them."""
    lag: int = 8
    """A run is learned once this many newer runs have arrived, so the latest runs (and a fault
    that begins in them) are judged before they are learned."""
    samples: int = 8
    """An hour's mean moves by 1/n of each new run's difference up to n samples, then by
    1/this (an exponential average); the means of each kind of day by 1/(8 x this)."""
    min_samples: int = 3
    """Samples an hour (or a kind of day) needs before its offset is used."""
    utc_offset_hours: float = field(default=0.0, metadata={"minimum": -14.0, "maximum": 14.0})
    """Where the fleet's days begin: hours east of UTC (e.g. -5 for New York in winter)."""


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
    settle_seconds: float = 60.0
    """Nor while its events still arrive: only once none has for this long (old runs being
    sent now, a backfill or an import of history, are not a pipeline that stopped)."""


@dataclass(frozen=True)
class StuckSettings:
    """A run RUNNING for several times its pipeline's usual duration."""

    enabled: bool = True
    """Run this detector."""
    min_runs: int = 5
    """Runs with a known duration needed to know what is usual."""
    factor: float = 6.0
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
    success_rate: SuccessRateSettings = field(default_factory=SuccessRateSettings)
    """A success rate falling below its own past."""
    duration_regression: RegressionSettings = field(default_factory=RegressionSettings)
    """Slower than its own past."""
    volume_drop: DropSettings = field(default_factory=DropSettings)
    """Fewer records than its own past."""
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    """What regression and drop know of each pipeline's week."""
    staleness: StaleSettings = field(default_factory=StaleSettings)
    """Gone quiet."""
    stuck_run: StuckSettings = field(default_factory=StuckSettings)
    """A run that does not end."""
