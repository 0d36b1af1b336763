"""What the detectors could see of a faulty pipeline soon after its fault began, in words: for
the report's examples of missed faults.

A Prober looks at each faulty pipeline once, when a detector should have spoken: after the third
affected run (or when the ramp of a falling success rate ends, four cadences into staleness, six
usual durations into a stuck run). Looking at the end would mislead: by then the ring buffer's
baseline may be all faulty runs.
"""

from __future__ import annotations

import bisect
import itertools
import math

from eval.scenario import Pipeline, Scenario
from eval.score import affected_times
from pipewarden.server.core.model import SUCCEEDED
from pipewarden.server.core.shards import PipelineState, ShardSet
from pipewarden.server.detection.history import median

__all__ = ["Prober", "seen"]

_AFTER_RUNS = 3


def _span(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}min"
    return f"{s / 3600:.1f}h"


def _baseline(values: list[float], recent: int) -> str:
    if len(values) <= recent:
        return f"only {len(values)} successful runs in the ring"
    base = values[:-recent]
    mid = median(base)
    spread = 1.4826 * median([abs(v - mid) for v in base])
    last = median(values[-recent:])
    ratio = last / mid if mid else math.nan
    return (
        f"last {recent} median {last:,.4g} = {ratio:.2f}x baseline median {mid:,.4g} "
        f"(robust σ {spread:,.4g}, {spread / mid if mid else math.nan:.0%} of it; "
        f"{len(base)} runs)"
    )


def _probe_time(p: Pipeline, scenario: Scenario) -> float:
    assert p.start is not None
    if p.kind == "stale":
        return p.start + 4 * p.cadence
    if p.kind == "stuck":
        return p.start + max(6 * p.duration, 600.0)
    if p.kind == "falling_success":
        return p.start + p.length * p.cadence
    times = affected_times(p, scenario)
    return times[min(_AFTER_RUNS, len(times)) - 1] if times else scenario.spec.end


class Prober:
    """Called after each replayed step; keeps `views`: pipeline id to what `seen` said."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.views: dict[str, str] = {}
        self._due = sorted(
            (_probe_time(p, scenario), p.pipeline_id)
            for p in scenario.pipelines
            if p.role == "fault"
        )
        self._next = 0

    def __call__(self, now: float, shards: ShardSet) -> None:
        """Look at the pipelines whose time has come."""
        due = self._due
        end = bisect.bisect_right(due, (now, "\uffff"), self._next)
        for _, pid in due[self._next : end]:
            p = self.scenario.by_id[pid]
            day = (now - self.scenario.spec.start) / 86_400
            self.views[pid] = f"at day {day:.2f}: " + seen(p, shards.get(pid), now)
        self._next = end


def seen(p: Pipeline, state: PipelineState | None, now: float, recent: int = 3) -> str:
    """A line on what the ring buffer and aggregates held for `p` at `now`."""
    if state is None:
        return "never seen by the server"
    ring = state.ring
    idx = list(ring.indices())
    ok = [i for i in idx if ring.status[i] == SUCCEEDED]
    durations = [ring.duration[i] for i in ok if not math.isnan(ring.duration[i])]
    records = [float(ring.records[i]) for i in ok]
    if p.kind in ("failures", "falling_success"):
        rate, n = state.recent_success_rate()
        return (
            f"{state.consecutive_failures} failures in a row at the end; success rate "
            f"{rate:.0%} over the last {n} runs, {state.success_rate:.1%} all-time"
        )
    if p.kind == "regression":
        return "durations: " + _baseline(durations, recent)
    if p.kind == "drop":
        return "records: " + _baseline(records, recent)
    if p.kind == "stale":
        times = sorted(ring.time[i] for i in idx)
        gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
        cadence = median(gaps) if gaps else math.nan
        quiet = now - state.last_time if state.last_time is not None else math.nan
        return f"quiet for {_span(quiet)} at the end; median gap {_span(cadence)}"
    if p.kind == "stuck":
        flight = state.in_flight or {}
        oldest = min(flight.values()) if flight else math.nan
        usual = median(durations) if durations else math.nan
        return (
            f"{len(flight)} in flight, oldest running {_span(now - oldest)}; "
            f"median duration {_span(usual)}"
        )
    return ""
