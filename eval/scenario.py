"""A labelled fleet: pipelines with a nature, some with an injected fault, some traps, and the
execution events they produce, in event-time order.

Everything is drawn from the seed. Each run's randomness comes from the seed, the pipeline and
the run's schedule slot, so a fault or a trap changes its own metric and nothing else. Time
starts on a Monday at midnight UTC, so weekends fall where the calendar puts them.

Roles:
- healthy: a pipeline of the fleet, with noise, a daily cycle (intra-day cadences), a milder
  weekend and a small failure rate; some are new: born part-way through the scored period.
- trap: healthy but odd, and not a fault: slow or small by nature (half of them new), noisy,
  one slow or small run, a deep weekend dip.
- fault: from its `start` on, a fault of one type (ground truth: type and start).

The first `warmup_days` are the server's past: replayed, so that established pipelines have
their history, but not scored. Faults, one-off runs and new pipelines all fall after it.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final

__all__ = [
    "DAY",
    "FAULT_TYPES",
    "TRAP_KINDS",
    "Pipeline",
    "Run",
    "Scenario",
    "ScenarioSpec",
    "build",
    "runs",
]

DAY: Final = 86_400.0
HOUR: Final = 3_600.0
MONDAY: Final = 1_704_067_200.0
"""2024-01-01T00:00:00Z, a Monday: the scenario's first instant."""

FAULT_TYPES: Final = ("failures", "falling_success", "regression", "drop", "stale", "stuck")
"""The injected faults, each on its own pipelines."""
TRAP_KINDS: Final = (
    "slow_by_nature",
    "small_by_nature",
    "noisy",
    "one_off_slow",
    "one_off_small",
    "weekend_dip",
)
"""Healthy pipelines that look odd; flagging one is a false alarm."""

# (seconds, tag, weight): mostly hourly and daily.
_CADENCES: Final = (
    (900.0, "15m", 0.10), (HOUR, "hourly", 0.38), (4 * HOUR, "4h", 0.08),
    (6 * HOUR, "6h", 0.10), (12 * HOUR, "12h", 0.06), (DAY, "daily", 0.28),
)  # fmt: skip
_TEAMS: Final = ("payments", "growth", "search", "ads", "risk", "logistics", "identity", "bi")
_ENGINES: Final = ("airflow", "spark", "dbt", "flink")
_TIERS: Final = (("gold", 0.2), ("silver", 0.4), ("bronze", 0.4))
_CANCEL_RATE: Final = 0.002
_MIN_DURATION: Final = 5.0
_MAX_DURATION: Final = 3 * HOUR
_WARM_RUNS: Final = 16
"""No fault or one-off trap before this many runs of the pipeline."""
_AFTER: Final = {
    "failures": 8,
    "falling_success": 24,
    "regression": 8,
    "drop": 8,
    "stale": 10,
    "stuck": 6,
}
"""Runs (cadences) of each fault that fit before the scenario ends, at least."""


@dataclass(frozen=True)
class ScenarioSpec:
    """What to simulate."""

    pipelines: int = 500
    """Pipelines in the fleet."""
    days: float = 35.0
    """Simulated time, from Monday 2024-01-01 00:00 UTC, warm-up included."""
    warmup_days: float = 14.0
    """The server's past: replayed but not scored. Every established pipeline has two weeks of
    history when scoring begins (a baseline, even for daily ones)."""
    seed: int = 4
    """Seed of every random choice."""
    fault_share: float = 0.04
    """Share of the fleet given each fault type (at least one pipeline per type)."""
    trap_share: float = 0.03
    """Share of the fleet made each kind of trap (at least one pipeline per kind)."""
    late_share: float = 0.1
    """Share of the healthy pipelines (and half of those slow or small by nature) that are new:
    they first run part-way through the scored period."""

    def __post_init__(self) -> None:
        if self.pipelines < 4 * (len(FAULT_TYPES) + len(TRAP_KINDS)):
            raise ValueError(f"pipelines must be at least 48, not {self.pipelines}")
        if self.days < self.warmup_days + 10:
            raise ValueError(
                f"days must be at least warmup_days + 10 = {self.warmup_days + 10:g}, "
                f"not {self.days:g}"
            )
        total = len(FAULT_TYPES) * self.fault_share + len(TRAP_KINDS) * self.trap_share
        if not 0 < total < 0.8:
            raise ValueError("fault_share and trap_share leave too few healthy pipelines")

    @property
    def start(self) -> float:
        """The first instant, Unix seconds."""
        return MONDAY

    @property
    def scored_from(self) -> float:
        """The end of the warm-up, Unix seconds."""
        return MONDAY + self.warmup_days * DAY

    @property
    def end(self) -> float:
        """The last instant, Unix seconds."""
        return MONDAY + self.days * DAY


@dataclass(frozen=True)
class Pipeline:
    """One pipeline's nature, its role, and for a fault or trap what was injected and when."""

    pipeline_id: str
    team: str
    cadence: float
    """Seconds between scheduled runs."""
    offset: float
    """Slots fall at offset + k·cadence (Unix seconds)."""
    born: float
    """No run is scheduled before this."""
    duration: float
    """Median seconds of a successful run, at average load."""
    duration_noise: float
    """σ of the log of a run's duration."""
    records: float
    """Median records of a successful run, at average load."""
    records_noise: float
    """σ of the log of a run's records."""
    failure_rate: float
    """Chance that a run fails."""
    weekend: float
    """Records on Saturdays and Sundays, as a fraction of a weekday's."""
    diurnal: float
    """Amplitude of the daily swing of records (intra-day cadences; 0 for daily)."""
    labels: Mapping[str, str]
    role: str = "healthy"
    """healthy, trap or fault."""
    kind: str = ""
    """The fault type (FAULT_TYPES) or trap kind (TRAP_KINDS)."""
    start: float | None = None
    """Ground truth: when the fault begins (the first affected slot; for stuck, when the stuck
    run started). For a one-off trap, the odd run's slot."""
    factor: float = 1.0
    """regression: durations ×; drop: records ×; falling_success: the final failure rate;
    one-off traps: that run's duration or records ×."""
    length: int = 0
    """failures: how many runs fail (0: until the end); falling_success: runs of the ramp."""

    def slot_of(self, t: float) -> float:
        """The first slot at or after `t`."""
        return self.offset + math.ceil((t - self.offset) / self.cadence) * self.cadence


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a pipeline."""

    slot: float
    started: float
    finished: float | None
    """None for a run that never ends (stuck) or ends after the scenario."""
    status: int
    """pipewarden.v1.ExecutionStatus: 1 succeeded, 2 failed, 4 cancelled."""
    records: int
    error: str
    affected: bool
    """Whether the pipeline's fault shows in this run."""


@dataclass(frozen=True)
class Scenario:
    """The fleet and its time span."""

    spec: ScenarioSpec
    pipelines: tuple[Pipeline, ...]
    by_id: Mapping[str, Pipeline] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "by_id", MappingProxyType({p.pipeline_id: p for p in self.pipelines})
        )


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _nature(index: int, spec: ScenarioSpec, rng: random.Random) -> Pipeline:
    cadence, tag = rng.choices([(c, t) for c, t, _ in _CADENCES], [w for *_, w in _CADENCES])[0]
    team = _TEAMS[min(int(rng.paretovariate(1.2)) - 1, len(_TEAMS) - 1)]
    duration = _log_uniform(rng, _MIN_DURATION, min(0.4 * cadence, _MAX_DURATION))
    # Bigger jobs tend to run longer: records follow the duration's place in its range, loosely.
    place = math.log(duration / _MIN_DURATION) / math.log(_MAX_DURATION / _MIN_DURATION)
    records = 10 ** (3.0 + 5.5 * (0.6 * place + 0.4 * rng.random()))
    tier = rng.choices([t for t, _ in _TIERS], [w for _, w in _TIERS])[0]
    weekend = rng.uniform(0.6, 0.95) if rng.random() < 0.7 else rng.uniform(0.95, 1.05)
    return Pipeline(
        pipeline_id=f"{team}.p{index:03d}_{tag}",
        team=team,
        cadence=cadence,
        offset=float(rng.randrange(int(cadence // 60)) * 60),
        born=spec.start,
        duration=duration,
        duration_noise=rng.uniform(0.05, 0.25),
        records=records,
        records_noise=rng.uniform(0.05, 0.2),
        failure_rate=_log_uniform(rng, 0.002, 0.03) * (0.5 if tier == "gold" else 1.0),
        weekend=weekend,
        diurnal=rng.uniform(0.05, 0.3) if cadence < DAY else 0.0,
        labels=MappingProxyType({"tier": tier, "engine": rng.choice(_ENGINES), "schedule": tag}),
    )


def _window(p: Pipeline, spec: ScenarioSpec, after: int) -> tuple[float, float] | None:
    """The slots where an event needing `after` more runs may start, or None."""
    low = p.slot_of(max(spec.scored_from, p.born + _WARM_RUNS * p.cadence))
    high = spec.end - after * p.cadence - 4 * p.duration
    return (low, high) if low <= high else None


def _slot_in(p: Pipeline, window: tuple[float, float], rng: random.Random) -> float:
    low, high = window
    return low + rng.randint(0, int((high - low) // p.cadence)) * p.cadence


def _fault(p: Pipeline, kind: str, spec: ScenarioSpec, rng: random.Random) -> Pipeline | None:
    """`p` with a fault of `kind`, or None when it cannot host one."""
    if kind == "falling_success":
        if p.cadence > 4 * HOUR:
            return None
        ramp = rng.randint(24, 96)
        window = _window(p, spec, ramp + _AFTER[kind])
        if window is None:
            return None
        final = rng.uniform(0.4, 0.8)
        return replace(
            p, role="fault", kind=kind, start=_slot_in(p, window, rng), factor=final, length=ramp
        )
    window = _window(p, spec, _AFTER[kind])
    if window is None:
        return None
    start = _slot_in(p, window, rng)
    if kind == "failures":
        length = 0 if rng.random() < 0.5 else rng.randint(4, 12)
        return replace(p, role="fault", kind=kind, start=start, length=length)
    if kind == "regression":
        return replace(p, role="fault", kind=kind, start=start, factor=rng.uniform(2.0, 5.0))
    if kind == "drop":
        return replace(p, role="fault", kind=kind, start=start, factor=rng.uniform(0.05, 0.4))
    if kind == "stuck":
        # Ground truth is when the stuck run started: its slot plus the scheduler's delay.
        jitter = random.Random(f"{spec.seed}:{p.pipeline_id}:{start}").uniform(0, _jitter(p))
        return replace(p, role="fault", kind=kind, start=start + jitter)
    return replace(p, role="fault", kind=kind, start=start)


def _trap(p: Pipeline, kind: str, spec: ScenarioSpec, rng: random.Random) -> Pipeline | None:
    """`p` made a trap of `kind`, or None when it cannot be one."""
    if kind == "slow_by_nature":
        if p.cadence < 6 * HOUR:
            return None
        duration = rng.uniform(2.5 * HOUR, min(5 * HOUR, 0.8 * p.cadence))
        return replace(p, role="trap", kind=kind, duration=duration)
    if kind == "small_by_nature":
        return replace(p, role="trap", kind=kind, records=_log_uniform(rng, 20, 500))
    if kind == "noisy":
        return replace(
            p,
            role="trap",
            kind=kind,
            duration_noise=rng.uniform(0.5, 0.8),
            records_noise=rng.uniform(0.35, 0.6),
            failure_rate=rng.uniform(0.03, 0.06),
        )
    if kind == "weekend_dip":
        return replace(p, role="trap", kind=kind, weekend=rng.uniform(0.2, 0.4))
    window = _window(p, spec, 4)
    if window is None:
        return None
    # A slow run stays below the stuck-run factor: a run 4x its usual length, still running, is
    # rightly called stuck.
    factor = rng.uniform(2.0, 3.5) if kind == "one_off_slow" else rng.uniform(0.01, 0.08)
    return replace(p, role="trap", kind=kind, start=_slot_in(p, window, rng), factor=factor)


def build(spec: ScenarioSpec) -> Scenario:
    """The fleet `spec` describes: natures, then faults, then traps, then late births."""
    rng = random.Random(spec.seed)
    fleet = [_nature(i, spec, rng) for i in range(spec.pipelines)]
    free = list(range(len(fleet)))
    rng.shuffle(free)
    wanted = [
        *[("fault", k, max(1, round(spec.fault_share * spec.pipelines))) for k in FAULT_TYPES],
        *[("trap", k, max(1, round(spec.trap_share * spec.pipelines))) for k in TRAP_KINDS],
    ]
    for role, kind, count in wanted:
        placed = 0
        for i in list(free):
            if placed == count:
                break
            make = _fault if role == "fault" else _trap
            changed = make(fleet[i], kind, spec, rng)
            if changed is not None:
                fleet[i] = changed
                free.remove(i)
                placed += 1
        if placed < count:
            raise ValueError(f"only {placed} of {count} pipelines could be given {kind}")
    late = free[: round(spec.late_share * len(free))]
    for kind in ("slow_by_nature", "small_by_nature"):
        late += [i for i, p in enumerate(fleet) if p.kind == kind][::2]
    for i in late:
        born = spec.scored_from + rng.uniform(0.0, spec.days - spec.warmup_days - 7.0) * DAY
        fleet[i] = replace(fleet[i], born=born)
    return Scenario(spec, tuple(fleet))


def _uniforms(seed: int, pipeline_id: str, slot: float) -> tuple[float, ...]:
    """Five uniform draws in (0, 1) for one run: a hash of the seed, pipeline and slot, so that
    a run is the same whatever else the scenario holds (and far cheaper than seeding a PRNG)."""
    digest = hashlib.blake2b(f"{seed}:{pipeline_id}:{slot:.0f}".encode(), digest_size=40).digest()
    return tuple((int.from_bytes(digest[i : i + 8], "little") + 1) / _SPAN for i in range(0, 40, 8))


_SPAN: Final = 2.0**64 + 2


def _jitter(p: Pipeline) -> float:
    """The longest scheduler delay between a slot and its run's start."""
    return min(45.0, 0.02 * p.cadence)


def _load(p: Pipeline, slot: float) -> float:
    """Records relative to the pipeline's average at this slot: weekend and time of day."""
    weekday = int((slot - MONDAY) // DAY) % 7
    load = p.weekend if weekday >= 5 else 1.0
    if p.diurnal:
        # Busiest mid-afternoon, quietest before dawn.
        load *= 1.0 + p.diurnal * math.sin(2 * math.pi * ((slot % DAY) / DAY - 0.375))
    return load


def _failure_rate(p: Pipeline, slot: float) -> float:
    if p.kind != "falling_success" or p.start is None or slot < p.start:
        return p.failure_rate
    done = (slot - p.start) / p.cadence
    return p.failure_rate + (p.factor - p.failure_rate) * min(1.0, (done + 1) / p.length)


def runs(p: Pipeline, spec: ScenarioSpec) -> Iterator[Run]:
    """The runs of `p` scheduled in the scenario, in slot order."""
    end = spec.end
    slot = p.slot_of(max(spec.start, p.born))
    fault_from = p.start if p.role == "fault" and p.start is not None else math.inf
    failing_until = math.inf
    if p.kind == "failures" and p.length:
        failing_until = fault_from + (p.length - 0.5) * p.cadence
    while slot < end:
        if p.kind == "stale" and slot >= fault_from:
            return
        # Draw everything every time, so injecting changes its own metric and nothing else.
        u_start, outcome, u_radius, u_angle, u_partial = _uniforms(spec.seed, p.pipeline_id, slot)
        started = slot + u_start * _jitter(p)
        radius = math.sqrt(-2.0 * math.log(u_radius))
        duration_draw = radius * math.cos(2 * math.pi * u_angle)
        records_draw = radius * math.sin(2 * math.pi * u_angle)
        partial = 0.05 + 0.95 * u_partial
        load = _load(p, slot)
        duration = p.duration * math.exp(duration_draw * p.duration_noise) * math.sqrt(load)
        records = p.records * math.exp(records_draw * p.records_noise) * load
        status, error = 1, ""
        if outcome < _CANCEL_RATE:
            status = 4
        elif outcome < _CANCEL_RATE + _failure_rate(p, slot):
            status, error = 2, _ERRORS[int(outcome * 1e6) % len(_ERRORS)]
        if p.kind == "stuck":
            affected = slot <= fault_from < slot + p.cadence
        else:
            affected = fault_from <= slot < failing_until
        if affected:
            if p.kind == "failures":
                status, error = 2, "Task exited with return code 1: upstream table missing"
            elif p.kind == "regression":
                duration *= p.factor
            elif p.kind == "drop":
                records *= p.factor
        if p.role == "trap" and slot == p.start:
            if p.kind == "one_off_slow":
                duration *= p.factor
            elif p.kind == "one_off_small":
                records *= p.factor
        if status != 1:
            duration *= partial
            records *= partial
        finish = started + max(1.0, duration)
        never = (p.kind == "stuck" and affected) or finish > end
        yield Run(
            slot=slot,
            started=started,
            finished=None if never else finish,
            status=status,
            records=max(1 if status == 1 else 0, round(records)),
            error=error,
            affected=affected,
        )
        slot += p.cadence


_ERRORS: Final = (
    "java.lang.OutOfMemoryError: Java heap space",
    "airflow.exceptions.AirflowTaskTimeout: Timeout",
    "psycopg2.OperationalError: could not connect to server: Connection refused",
    "org.apache.spark.shuffle.FetchFailedException: Failed to connect to executor",
)
