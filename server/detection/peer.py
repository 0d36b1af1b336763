"""The peer rule: a pipeline against the other pipelines of its scope.

Each pipeline with at least `min_executions` is compared with the mean μ and population standard
deviation σ of the same aggregate over its peers (σ raised to a floor): success rate below
μ − k·σ, average duration above μ + k·σ, average records below μ − k·σ; the severity grows with
the deviation (see PeerSettings).

For each scope and aggregate the detector keeps running sums over the qualifying pipelines
(count, Σx, Σx²), updated when a pipeline's aggregate changes, so that judging one pipeline
against all the others (leave-one-out mean and population σ) costs O(1) whatever the fleet's
size. With `statistics: robust` it keeps the values sorted instead and uses the median and
1.4826·MAD (the MAD of the whole scope, recomputed when the scope has changed by a few percent).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from pipewarden.names import CRITICAL, HIGH, HIGH_DURATION, LOW_RECORDS, LOW_SUCCESS_RATE, MEDIUM
from pipewarden.server.core.detect import Anomaly
from pipewarden.server.core.model import FAILED, SUCCEEDED
from pipewarden.server.core.shards import PipelineState, ShardSet
from pipewarden.server.detection.settings import MetricRule, PeerSettings

__all__ = ["PeerDetector", "severity_for"]

RESUM_EVERY = 1_000_000  # updates between exact recomputations of the running sums


def severity_for(deviation: float, high_delta: float) -> int:
    """MEDIUM when flagged, HIGH beyond high_delta, CRITICAL beyond twice that."""
    if deviation > 2 * high_delta:
        return CRITICAL
    if deviation > high_delta:
        return HIGH
    return MEDIUM


class _Moments:
    """Count, sum and sum of squares of a population."""

    __slots__ = ("n", "q", "s")

    def __init__(self) -> None:
        self.n = 0
        self.s = 0.0
        self.q = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.s += x
        self.q += x * x

    def remove(self, x: float) -> None:
        self.n -= 1
        self.s -= x
        self.q -= x * x

    def without(self, x: float) -> tuple[float, float, int]:
        """Mean and population σ of the others, and how many they are."""
        n = self.n - 1
        if n <= 0:
            return 0.0, 0.0, 0
        mean = (self.s - x) / n
        var = (self.q - x * x) / n - mean * mean
        return mean, math.sqrt(var) if var > 0 else 0.0, n


class _Sorted:
    """The values of a population in order, for the median and MAD."""

    __slots__ = ("_mad", "_mad_at", "changes", "values")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.changes = 0
        self._mad = 0.0
        self._mad_at = -1

    def add(self, x: float) -> None:
        bisect.insort(self.values, x)
        self.changes += 1

    def remove(self, x: float) -> None:
        i = bisect.bisect_left(self.values, x)
        if i < len(self.values) and self.values[i] == x:
            del self.values[i]
        self.changes += 1

    def without(self, x: float) -> tuple[float, float, int]:
        """Median of the others, 1.4826·MAD of the scope, and how many others there are."""
        values = self.values
        n = len(values) - 1
        if n <= 0:
            return 0.0, 0.0, 0
        skip = bisect.bisect_left(values, x)

        def at(k: int) -> float:  # the k-th of the others
            return values[k + 1] if k >= skip else values[k]

        median = at(n // 2) if n % 2 else (at(n // 2 - 1) + at(n // 2)) / 2
        if self._mad_at < 0 or abs(self.changes - self._mad_at) > max(8, len(values) // 32):
            full = values[len(values) // 2]
            deviations = sorted(abs(v - full) for v in values)
            self._mad = deviations[len(deviations) // 2]
            self._mad_at = self.changes
        return median, 1.4826 * self._mad, n


@dataclass(slots=True)
class _Contribution:
    scope: str
    success_rate: float | None
    duration: float | None
    records: float | None


class PeerDetector:
    """Implements the Detector protocol with the peer rule."""

    def __init__(self, settings: PeerSettings) -> None:
        self.settings = settings
        self.robust = settings.statistics == "robust"
        self._stats: dict[tuple[str, str], _Moments | _Sorted] = {}
        self._contributions: dict[str, _Contribution] = {}
        self._updates = 0
        label = settings.scope.removeprefix("label:") if settings.scope.startswith("label:") else ""
        self._label = label

    # -- the fleet's statistics ------------------------------------------------------------------

    def _scope(self, p: PipelineState) -> str:
        scope = self.settings.scope
        if scope == "fleet":
            return ""
        if scope == "team":
            return p.team
        return (p.labels or {}).get(self._label, "")

    def _values(self, p: PipelineState) -> _Contribution | None:
        if p.total < self.settings.min_executions:
            return None
        if self.settings.window == "recent":
            ok = bad = 0
            durations: list[float] = []
            records: list[float] = []
            ring = p.ring
            for i in ring.indices():
                status = ring.status[i]
                if status == SUCCEEDED:
                    ok += 1
                elif status == FAILED:
                    bad += 1
                else:
                    continue
                d = ring.duration[i]
                if not math.isnan(d):
                    durations.append(d)
                records.append(float(ring.records[i]))
            return _Contribution(
                self._scope(p),
                ok / (ok + bad) if ok + bad else None,
                sum(durations) / len(durations) if durations else None,
                sum(records) / len(records) if records else None,
            )
        judged = p.succeeded + p.failed
        return _Contribution(
            self._scope(p),
            p.success_rate if judged else None,
            p.avg_duration if p.duration_count else None,
            p.avg_records if judged else None,
        )

    def _population(self, scope: str, metric: str) -> _Moments | _Sorted:
        key = (scope, metric)
        found = self._stats.get(key)
        if found is None:
            found = self._stats[key] = _Sorted() if self.robust else _Moments()
        return found

    def update(self, p: PipelineState) -> _Contribution | None:
        """Bring the running statistics up to date with `p`'s aggregates; return its values."""
        new = self._values(p)
        old = self._contributions.get(p.pipeline_id)
        if old == new:
            return new
        for metric in ("success_rate", "duration", "records"):
            if old is not None and (x := getattr(old, metric)) is not None:
                self._population(old.scope, metric).remove(x)
            if new is not None and (x := getattr(new, metric)) is not None:
                self._population(new.scope, metric).add(x)
        if new is None:
            self._contributions.pop(p.pipeline_id, None)
        else:
            self._contributions[p.pipeline_id] = new
        self._updates += 1
        if not self.robust and self._updates % RESUM_EVERY == 0:
            self._resum()
        return new

    def _resum(self) -> None:
        """Recompute the running sums exactly, so float error cannot build up."""
        self._stats.clear()
        for c in self._contributions.values():
            for metric in ("success_rate", "duration", "records"):
                if (x := getattr(c, metric)) is not None:
                    self._population(c.scope, metric).add(x)

    # -- the Detector protocol -------------------------------------------------------------------

    def evaluate(self, pipeline: PipelineState, fleet: ShardSet, now: float) -> list[Anomaly]:
        """The peer rule's verdicts on `pipeline`, after accounting for its latest run."""
        values = self.update(pipeline)
        if values is None or not self.settings.enabled:
            return []
        found: list[Anomaly] = []
        s = self.settings
        where = self._where(values.scope)
        if values.success_rate is not None:
            a = self._judge(pipeline, values, "success_rate", s.success_rate, where)
            if a:
                found.append(a)
        if values.duration is not None:
            a = self._judge(pipeline, values, "duration", s.duration, where)
            if a:
                found.append(a)
        if values.records is not None:
            a = self._judge(pipeline, values, "records", s.records, where)
            if a:
                found.append(a)
        return found

    def _where(self, scope: str) -> str:
        if self.settings.scope == "fleet":
            return "in the fleet"
        if self.settings.scope == "team":
            return f"in team {scope}"
        return f"with {self._label}={scope or '(none)'}"

    def _judge(
        self, p: PipelineState, values: _Contribution, metric: str, rule: MetricRule, where: str
    ) -> Anomaly | None:
        x = getattr(values, metric)
        assert x is not None
        mu, sigma, peers = self._population(values.scope, metric).without(x)
        if peers == 0:
            return None
        if metric == "success_rate":
            sigma = max(sigma, rule.sigma_floor)
            threshold = mu - rule.k * sigma
            if not x < threshold:
                return None
            deviation = mu - x
            return Anomaly(
                p.pipeline_id,
                p.team,
                LOW_SUCCESS_RATE,
                severity_for(deviation, rule.high_delta),
                f"success rate {x:.1%} is below its {peers} peers' {mu:.1%} "
                f"(flagged under {threshold:.1%}: mean − {rule.k:g}σ, σ {sigma:.1%}) {where}",
                x,
                mu,
                "ratio",
            )
        sigma = max(sigma, rule.sigma_floor * abs(mu))
        if mu <= 0:
            return None
        if metric == "duration":
            threshold = mu + rule.k * sigma
            if not x > threshold:
                return None
            deviation = (x - mu) / mu
            return Anomaly(
                p.pipeline_id,
                p.team,
                HIGH_DURATION,
                severity_for(deviation, rule.high_delta),
                f"average duration {_secs(x)} is {x / mu:.1f}x its {peers} peers' {_secs(mu)} "
                f"(flagged over {_secs(threshold)}: mean + {rule.k:g}σ) {where}",
                x,
                mu,
                "seconds",
            )
        threshold = mu - rule.k * sigma
        if not x < threshold:
            return None
        deviation = (mu - x) / mu
        return Anomaly(
            p.pipeline_id,
            p.team,
            LOW_RECORDS,
            severity_for(deviation, rule.high_delta),
            f"average records {x:,.0f} is {deviation:.0%} below its {peers} peers' {mu:,.0f} "
            f"(flagged under {max(threshold, 0):,.0f}: mean − {rule.k:g}σ) {where}",
            x,
            mu,
            "records",
        )


def _secs(s: float) -> str:
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"
