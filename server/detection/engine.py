"""The detectors together: which judge what, and the deadlines that notice silence.

By default every detector runs. A pipeline's duration and records are judged against its own
baseline once it has one, and against its peers until then (a pipeline that is slow by nature is
not broken). Staleness and stuck runs are about time passing without events, so each pipeline
has at most one deadline in a heap; `due` pops the passed ones for re-evaluation, so nothing
scans the fleet.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

from pipewarden.names import (
    CRITICAL,
    HIGH,
    HIGH_DURATION,
    LOW_RECORDS,
    LOW_SUCCESS_RATE,
    MEDIUM,
    STALE,
    STUCK_RUN,
)
from pipewarden.server.core.detect import Anomaly
from pipewarden.server.core.shards import PipelineState, ShardSet
from pipewarden.server.detection.history import (
    RegressionDetector,
    StreakDetector,
    SuccessRateDetector,
    VolumeDropDetector,
    binomial_tail,
    median,
)
from pipewarden.server.detection.peer import PeerDetector
from pipewarden.server.detection.profile import fold
from pipewarden.server.detection.settings import DetectionSettings, MetricRule

__all__ = ["DETECTORS", "DetectionEngine"]

DETECTORS = (
    "peer",
    "consecutive_failures",
    "success_rate",
    "duration_regression",
    "volume_drop",
    "staleness",
    "stuck_run",
)
REFRESH_EVERY = 16  # runs between recomputations of a pipeline's rhythm


@dataclass(slots=True)
class _Rhythm:
    cadence: float | None
    """Median seconds between runs."""
    typical: float | None
    """Median duration of a successful run."""
    long: float | None
    """A duration its successful runs rarely exceed: median + mad_k robust σ, on a log scale."""
    at_total: int


class DetectionEngine:
    """Implements the Detector protocol with every detector, or the `enabled` ones."""

    def __init__(self, settings: DetectionSettings, enabled: Collection[str] | None = None) -> None:
        self.settings = settings
        if enabled is None:
            enabled = [name for name in DETECTORS if getattr(settings, name).enabled]
        unknown = set(enabled) - set(DETECTORS)
        if unknown:
            raise ValueError(f"unknown detectors {sorted(unknown)}; known: {DETECTORS}")
        self.enabled = frozenset(enabled)
        self.peer = PeerDetector(settings.peer)
        self.streak = StreakDetector(settings.consecutive_failures)
        self.success = SuccessRateDetector(settings.success_rate)
        self.regression = RegressionDetector(settings.duration_regression, settings.profile)
        self.drop = VolumeDropDetector(settings.volume_drop, settings.profile)
        self._learn = settings.profile.enabled and bool(
            self.enabled & {"duration_regression", "volume_drop"}
        )
        self._rhythms: dict[str, _Rhythm] = {}
        self._heap: list[tuple[float, str]] = []
        self._deadline: dict[str, float] = {}

    def evaluate(self, pipeline: PipelineState, fleet: ShardSet, now: float) -> list[Anomaly]:
        """Every enabled detector's verdict on `pipeline` at `now`."""
        on = self.enabled
        p = pipeline
        out: list[Anomaly] = []
        if self._learn:
            fold(p, self.settings.profile)
        if "peer" in on:
            out += self._peer_verdicts(p, fleet, now)
        found: Anomaly | None
        next_check = float("inf")
        if "consecutive_failures" in on:
            found = self.streak.evaluate(p)
            p.streak_judged()
            if found is not None:
                out.append(found)
                if found.after_runs:
                    # A streak that has ended fires now and is judged again at once, so that
                    # its alert resolves with the success already in.
                    next_check = now
        if "success_rate" in on and (found := self.success.evaluate(p)) is not None:
            out.append(found)
        if "duration_regression" in on and (found := self.regression.evaluate(p)) is not None:
            out.append(found)
        if "volume_drop" in on and (found := self.drop.evaluate(p)) is not None:
            out.append(found)
        if "staleness" in on or "stuck_run" in on:
            rhythm = self._rhythm(p)
            if "staleness" in on:
                stale, when = self._stale(p, rhythm, now)
                if stale is not None:
                    out.append(stale)
                next_check = min(next_check, when)
            if "stuck_run" in on:
                stuck, when = self._stuck(p, rhythm, now)
                if stuck is not None:
                    out.append(stuck)
                next_check = min(next_check, when)
        self._schedule(p.pipeline_id, next_check)
        return out

    def urgent(self, pipeline: PipelineState) -> bool:
        """Whether the pipeline's failure streak has crossed its HIGH or CRITICAL length since
        it was last judged (reached it, or jumped past it by several failures at once, and
        perhaps ended since): it pages (or chats) now, not after the detection pass under
        way."""
        peak, judged = pipeline.peak_failures, pipeline.judged_failures
        if peak <= judged or peak < self.settings.consecutive_failures.high:
            return False
        if "consecutive_failures" not in self.enabled:
            return False
        # One pair of thresholds for both: those of the pipeline's runs outside its peak streak.
        high, critical = self.streak.thresholds(pipeline, peak)
        return (peak >= high and judged < high) or (peak >= critical and judged < critical)

    def _peer_verdicts(self, p: PipelineState, fleet: ShardSet, now: float) -> list[Anomaly]:
        """The peer rule's verdicts that stand: with the own-history detector of a metric on, a
        pipeline with a history of its own is judged against that (a pipeline that is slow,
        small or a little flaky by nature is not broken), and one without is judged by its peers
        on the metrics whose `new_pipelines` is set."""
        on, rules = self.enabled, self.settings.peer
        judged_alone: dict[int, tuple[str, Callable[[PipelineState], bool], MetricRule]] = {
            HIGH_DURATION: ("duration_regression", self.regression.has_baseline, rules.duration),
            LOW_RECORDS: ("volume_drop", self.drop.has_baseline, rules.records),
            LOW_SUCCESS_RATE: ("success_rate", self.success.has_baseline, rules.success_rate),
        }
        out: list[Anomaly] = []
        for verdict in self.peer.evaluate(p, fleet, now):
            detector, has_baseline, rule = judged_alone[verdict.kind]
            if detector in on:
                if has_baseline(p) or not rule.new_pipelines:
                    continue
                if verdict.kind == LOW_SUCCESS_RATE and not self._unlikely(p, verdict.expected):
                    continue
            out.append(verdict)
        return out

    def _unlikely(self, p: PipelineState, peers_rate: float) -> bool:
        """Whether `p`'s failures are too many for its few runs to be chance, at its peers'
        success rate."""
        runs = p.succeeded + p.failed
        # Peers that never fail still fail sometimes: their rate is floored as σ is.
        failure_rate = max(1.0 - peers_rate, self.settings.peer.success_rate.sigma_floor)
        chance = binomial_tail(runs, p.failed, failure_rate)
        return chance <= self.settings.peer.new_pipeline_max_chance

    def due(self, now: float) -> list[str]:
        """Pipelines whose deadline has passed by `now`; each is returned once per deadline."""
        out: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, pid = heapq.heappop(heap)
            if self._deadline.get(pid) == when:
                del self._deadline[pid]
                out.append(pid)
        return out

    def forget(self, pipeline_id: str) -> None:
        """Drop what is kept about a pipeline."""
        self._rhythms.pop(pipeline_id, None)
        self._deadline.pop(pipeline_id, None)

    # -- time-based detectors --------------------------------------------------------------------

    def _schedule(self, pid: str, when: float) -> None:
        if when == float("inf"):
            self._deadline.pop(pid, None)
            return
        if self._deadline.get(pid) == when:
            return
        self._deadline[pid] = when
        heapq.heappush(self._heap, (when, pid))
        if len(self._heap) > 4 * len(self._deadline) + 1024:
            # Superseded entries pile up; rebuild from the live deadlines now and then.
            self._heap = [(t, k) for k, t in self._deadline.items()]
            heapq.heapify(self._heap)

    def _rhythm(self, p: PipelineState) -> _Rhythm:
        cached = self._rhythms.get(p.pipeline_id)
        if cached is not None and p.total - cached.at_total < REFRESH_EVERY:
            return cached
        ring = p.ring
        times = sorted(ring.time[i] for i in ring.indices())
        gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
        durations = [
            ring.duration[i]
            for i in ring.indices()
            if ring.status[i] == 1 and ring.duration[i] == ring.duration[i]  # not NaN
        ]
        typical = long = None
        if len(durations) >= self.settings.stuck_run.min_runs:
            typical = median(durations)
            # A pipeline whose latest runs are slower by the regression ratio (a regression,
            # reported as such) is judged by them: a run of its new usual length is not stuck.
            regression = self.settings.duration_regression
            latest = median(durations[-regression.recent :])
            if latest > regression.ratio * typical:
                typical = latest
            logs = [math.log1p(d) for d in durations]
            mid = median(logs)
            spread = 1.4826 * median([abs(x - mid) for x in logs])
            long = math.expm1(mid + self.settings.stuck_run.mad_k * spread)
        rhythm = _Rhythm(
            median(gaps) if len(gaps) + 1 >= self.settings.staleness.min_runs else None,
            typical,
            long,
            p.total,
        )
        self._rhythms[p.pipeline_id] = rhythm
        return rhythm

    def _stale(self, p: PipelineState, rhythm: _Rhythm, now: float) -> tuple[Anomaly | None, float]:
        s = self.settings.staleness
        if rhythm.cadence is None or p.last_time is None:
            return None, float("inf")
        last = p.last_time
        # Not while its events are still arriving: old runs sent now (a backfill, an import of
        # history) are not a pipeline that stopped.
        received = p.last_received
        settled_at = -math.inf if received is None else received + s.settle_seconds
        cadence = rhythm.cadence
        steps = [
            (max(s.factor * cadence, s.min_seconds), MEDIUM),
            (max(s.high_factor * cadence, s.min_seconds), HIGH),
            (max(s.critical_factor * cadence, s.min_seconds), CRITICAL),
        ]
        quiet = now - last
        found: Anomaly | None = None
        for after, severity in steps:
            if quiet > after and now >= settled_at:
                found = Anomaly(
                    p.pipeline_id,
                    p.team,
                    STALE,
                    severity,
                    f"no run for {_span(quiet)}: it usually runs every {_span(cadence)} "
                    f"(stale after {_span(after)})",
                    quiet,
                    cadence,
                    "seconds",
                )
            else:
                return found, max(last + after, settled_at)
        return found, float("inf")

    def _stuck(self, p: PipelineState, rhythm: _Rhythm, now: float) -> tuple[Anomaly | None, float]:
        s = self.settings.stuck_run
        if not p.in_flight or rhythm.typical is None:
            return None, float("inf")
        execution_id, started = min(p.in_flight.items(), key=lambda item: item[1])
        typical = rhythm.typical
        long = rhythm.long or 0.0
        steps = [
            (max(s.factor * typical, long, s.min_seconds), HIGH),
            (max(s.critical_factor * typical, long, s.min_seconds), CRITICAL),
        ]
        running = now - started
        found: Anomaly | None = None
        for after, severity in steps:
            if running > after:
                found = Anomaly(
                    p.pipeline_id,
                    p.team,
                    STUCK_RUN,
                    severity,
                    f"run {execution_id} has been running for {_span(running)}; its runs "
                    f"usually take {_span(typical)} (stuck after {_span(after)})",
                    running,
                    typical,
                    "seconds",
                )
            else:
                return found, started + after
        return found, float("inf")


def _span(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}min"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f} days"
