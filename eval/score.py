"""Scoring at pipeline granularity: per fault type, which faulty pipelines were detected, how
soon, and which pipelines were flagged without cause.

A detection of a fault is an anomaly of a kind that matches its type, raised (newly present) at
or after the fault's start. A false positive of a type is a pipeline that had an anomaly of a
matching kind that no fault of its own explains: on a pipeline without such a fault, or raised
before the fault's start. A kind shared by two types (the failure kinds) is explained by either.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eval.replay import Raised
from eval.scenario import FAULT_TYPES, TRAP_KINDS, Pipeline, Scenario, runs
from pipewarden import names
from pipewarden.names import (
    CONSECUTIVE_FAILURES,
    DURATION_REGRESSION,
    HIGH_DURATION,
    LOW_RECORDS,
    LOW_SUCCESS_RATE,
    STALE,
    STUCK_RUN,
    VOLUME_DROP,
)

__all__ = [
    "CONFIG_KINDS",
    "KIND_NAMES",
    "MATCHING",
    "Miss",
    "TrapScore",
    "TypeScore",
    "affected_times",
    "percentile",
    "score_traps",
    "score_type",
    "scored_types",
]

KIND_NAMES: Mapping[int, str] = {n: name.upper() for n, name in names.KIND_NAMES.items()}
MATCHING: Mapping[str, frozenset[int]] = {
    "failures": frozenset({CONSECUTIVE_FAILURES, LOW_SUCCESS_RATE}),
    "falling_success": frozenset({LOW_SUCCESS_RATE, CONSECUTIVE_FAILURES}),
    "regression": frozenset({DURATION_REGRESSION, HIGH_DURATION}),
    "drop": frozenset({VOLUME_DROP, LOW_RECORDS}),
    "stale": frozenset({STALE}),
    "stuck": frozenset({STUCK_RUN}),
}
"""The anomaly kinds that detect each fault type."""
CONFIG_KINDS: Mapping[str, frozenset[int]] = {
    "peer": frozenset({LOW_SUCCESS_RATE, HIGH_DURATION, LOW_RECORDS}),
    "consecutive_failures": frozenset({CONSECUTIVE_FAILURES}),
    "success_rate": frozenset({LOW_SUCCESS_RATE}),
    "duration_regression": frozenset({DURATION_REGRESSION}),
    "volume_drop": frozenset({VOLUME_DROP}),
    "staleness": frozenset({STALE}),
    "stuck_run": frozenset({STUCK_RUN}),
}
"""The kinds each detector can raise; a configuration is scored on the fault types it can
detect."""


def scored_types(enabled: Sequence[str] | None) -> list[str]:
    """The fault types a configuration can detect (all of them for the default)."""
    if enabled is None:
        return list(FAULT_TYPES)
    kinds = frozenset().union(*(CONFIG_KINDS[name] for name in enabled))
    return [t for t in FAULT_TYPES if MATCHING[t] & kinds]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-th percentile (0 < q <= 100), or None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


@dataclass(frozen=True)
class Miss:
    """An example for the report: a pipeline the detectors got wrong, and what they said."""

    pipeline_id: str
    role: str
    kind: str
    """The pipeline's fault type or trap kind ("" when healthy)."""
    start: float | None
    note: str
    """What happened: the anomaly that was raised, or what the detector saw."""


@dataclass
class TypeScore:
    """One fault type under one configuration."""

    fault: str
    faulty: int
    detected: int
    false_positives: int
    fp_by_role: dict[str, int]
    """False-positive pipelines by role: healthy, trap, fault (another type), early (this
    type, raised before the start)."""
    fp_by_kind: dict[str, int]
    """False-positive pipelines by the anomaly kind that made them one (a pipeline may count
    under several kinds)."""
    delays_runs: list[int]
    delays_hours: list[float]
    missed: list[Miss] = field(default_factory=list)
    wrong: list[Miss] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        """detected / (detected + false positives); None when nothing was flagged."""
        flagged = self.detected + self.false_positives
        return self.detected / flagged if flagged else None

    @property
    def recall(self) -> float:
        """detected / faulty."""
        return self.detected / self.faulty if self.faulty else 0.0

    @property
    def f1(self) -> float:
        """The harmonic mean of precision and recall (0 when either is 0 or undefined)."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p and r else 0.0


def affected_times(p: Pipeline, scenario: Scenario) -> list[float]:
    """When each run affected by the fault became visible, in order: terminal events for the
    run-by-run faults, slots for staleness (each a missed run) and stuck runs."""
    assert p.start is not None
    end = scenario.spec.end
    if p.kind == "stale":
        return _slots(p.slot_of(p.start), p.cadence, end)
    if p.kind == "stuck":
        return _slots(p.slot_of(p.start) - p.cadence, p.cadence, end)
    return sorted(r.finished for r in runs(p, scenario.spec) if r.affected and r.finished)


def _slots(first: float, cadence: float, end: float) -> list[float]:
    return [first + k * cadence for k in range(int((end - first) // cadence) + 1)]


def _explained(p: Pipeline, r: Raised) -> bool:
    return (
        p.role == "fault"
        and p.start is not None
        and r.kind in MATCHING[p.kind]
        and r.time >= p.start
    )


def _note(r: Raised) -> str:
    return f"{KIND_NAMES.get(r.kind, r.kind)} at day {{day:.2f}}: {r.message}"


def score_type(
    fault: str,
    scenario: Scenario,
    raised: Mapping[str, Sequence[Raised]],
    examples: int = 5,
    seen: Mapping[str, str] | None = None,
) -> TypeScore:
    """How the configuration that raised `raised` did on fault type `fault`. `seen` describes
    what the detectors saw of each faulty pipeline, for the examples of misses."""
    kinds = MATCHING[fault]
    start = scenario.spec.start
    faulty = [p for p in scenario.pipelines if p.role == "fault" and p.kind == fault]
    out = TypeScore(fault, len(faulty), 0, 0, {}, {}, [], [])
    for p in faulty:
        assert p.start is not None
        found = raised.get(p.pipeline_id, ())
        hit = next((r for r in found if r.kind in kinds and r.time >= p.start), None)
        if hit is None:
            if len(out.missed) < examples:
                note = "not detected; " + (seen or {}).get(p.pipeline_id, "")
                out.missed.append(Miss(p.pipeline_id, p.role, p.kind, p.start, note))
            continue
        out.detected += 1
        times = affected_times(p, scenario)
        out.delays_runs.append(bisect.bisect_right(times, hit.time))
        out.delays_hours.append((hit.time - p.start) / 3600)
    for pid, rs in raised.items():
        p = scenario.by_id[pid]
        unexplained = [r for r in rs if r.kind in kinds and not _explained(p, r)]
        if not unexplained:
            continue
        wrong = unexplained[0]
        for kind in {r.kind for r in unexplained}:
            name = KIND_NAMES.get(kind, str(kind))
            out.fp_by_kind[name] = out.fp_by_kind.get(name, 0) + 1
        out.false_positives += 1
        role = "early" if p.role == "fault" and p.kind == fault else p.role
        out.fp_by_role[role] = out.fp_by_role.get(role, 0) + 1
        if len(out.wrong) < examples:
            note = _note(wrong).format(day=(wrong.time - start) / 86_400)
            out.wrong.append(Miss(pid, p.role, p.kind, p.start, note))
    return out


@dataclass
class TrapScore:
    """How many traps (and healthy pipelines) one configuration flagged."""

    traps: int
    flagged: int
    by_kind: dict[str, tuple[int, int]]
    """Per trap kind: (flagged, of how many)."""
    healthy: int
    healthy_flagged: int
    natural_peer: dict[str, tuple[int, int]]
    """The peer rule's own verdicts on pipelines slow or small by nature: HIGH_DURATION on
    slow_by_nature, LOW_RECORDS on small_by_nature, as (flagged, of how many)."""
    kinds_on_traps: dict[str, int]
    """Trap pipelines flagged, per anomaly kind."""
    examples: list[Miss] = field(default_factory=list)

    @property
    def share(self) -> float:
        """Share of traps flagged with any anomaly."""
        return self.flagged / self.traps if self.traps else 0.0


def score_traps(
    scenario: Scenario, raised: Mapping[str, Sequence[Raised]], examples: int = 5
) -> TrapScore:
    """Which traps and healthy pipelines were flagged (any anomaly kind, any time)."""
    start = scenario.spec.start
    by_kind = {k: [0, 0] for k in TRAP_KINDS}
    natural = {"slow_by_nature": [0, 0], "small_by_nature": [0, 0]}
    own = {"slow_by_nature": HIGH_DURATION, "small_by_nature": LOW_RECORDS}
    kinds_on_traps: dict[str, int] = {}
    out = TrapScore(0, 0, {}, 0, 0, {}, {})
    for p in scenario.pipelines:
        rs = raised.get(p.pipeline_id, ())
        if p.role == "healthy":
            out.healthy += 1
            out.healthy_flagged += bool(rs)
            continue
        if p.role != "trap":
            continue
        out.traps += 1
        by_kind[p.kind][1] += 1
        if p.kind in natural:
            natural[p.kind][1] += 1
            natural[p.kind][0] += any(r.kind == own[p.kind] for r in rs)
        if not rs:
            continue
        out.flagged += 1
        by_kind[p.kind][0] += 1
        for kind in {r.kind for r in rs}:
            name = KIND_NAMES.get(kind, str(kind))
            kinds_on_traps[name] = kinds_on_traps.get(name, 0) + 1
        if len(out.examples) < examples:
            r = rs[0]
            note = _note(r).format(day=(r.time - start) / 86_400)
            out.examples.append(Miss(p.pipeline_id, p.role, p.kind, p.start, note))
    out.by_kind = {k: (v[0], v[1]) for k, v in by_kind.items()}
    out.natural_peer = {k: (v[0], v[1]) for k, v in natural.items()}
    out.kinds_on_traps = dict(sorted(kinds_on_traps.items()))
    return out
