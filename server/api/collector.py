"""What /metrics shows of one node: its own health and its pipelines' health, read at scrape time.

Two kinds of metric, two places (the registry pattern; see also server/base/metrics.py):

- Process-wide counters and histograms (events ingested, fsync latency, snapshot time, ...)
  live in `server.metrics`, in prometheus-client's default registry, updated where things
  happen. New ones of that kind go there (the notifiers' results by receiver and outcome, say).
- Values that are a node's state at the moment of the scrape (queue depths, the pipelines'
  health, alerts firing by team and severity) are read from the state by collectors registered
  on the node's own registry, `App.registry`, which `node_registry` builds. A part that owns
  such state adds itself with `registry.register(...)` or a callback gauge
  (`Gauge(..., registry=app.registry).set_function(...)`), as `queue_gauges` does: nothing is
  kept twice and nothing needs updating on the hot path.

The node's registry also yields everything in the default registry, so one scrape has both.
Per-pipeline series are capped (`metrics.max_pipeline_series`); team series are always whole.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from pipewarden.names import SEVERITY_NAMES
from pipewarden.server.core.shards import PipelineState, ShardSet

__all__ = [
    "AlertCollector",
    "FleetCollector",
    "MetricsSettings",
    "node_registry",
    "queue_gauges",
    "worst_first",
]


@dataclass(frozen=True)
class MetricsSettings:
    """The `metrics:` section of the configuration."""

    max_pipeline_series: int = 500
    """Most pipelines that get series of their own on /metrics (each costs eight series). Beyond
    it the worst pipelines are shown (most consecutive failures, then lowest success rate), and
    `pipewarden_pipeline_series_omitted` says how many were left out; team series always cover
    every pipeline. 0 turns per-pipeline series off."""


def worst_first(state: PipelineState) -> tuple[int, float, str]:
    """Sort key that puts the pipelines in the most trouble first, then by id (stable)."""
    judged = state.succeeded + state.failed
    rate = state.succeeded / judged if judged else 1.0
    return (-state.consecutive_failures, rate, state.pipeline_id)


class _DefaultRegistry(Collector):
    """Everything in prometheus-client's process-wide registry, for a node's own registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class FleetCollector(Collector):
    """The pipelines' and teams' health, from the shards at scrape time.

    It runs on the event loop (the HTTP handler), so it reads a consistent state; its cost is
    one pass over the pipelines plus, over the cap, a partial sort of them.
    """

    def __init__(self, shards: ShardSet, settings: MetricsSettings) -> None:
        self.shards = shards
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        yield from self._pipelines()
        yield from self._teams()

    def _pipelines(self) -> Iterator[Metric]:
        cap = self.settings.max_pipeline_series
        total = len(self.shards)
        states: Iterable[PipelineState] = self.shards.pipelines()
        if total > cap:
            states = heapq.nsmallest(cap, states, key=worst_first) if cap else []
        labels = ["pipeline", "team"]
        rate = GaugeMetricFamily(
            "pipewarden_pipeline_success_rate",
            "succeeded / (succeeded + failed) over all of the pipeline's runs; 0 when none.",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            "pipewarden_pipeline_avg_duration_seconds",
            "Mean duration of the pipeline's succeeded and failed runs of known duration.",
            labels=labels,
        )
        records = GaugeMetricFamily(
            "pipewarden_pipeline_avg_records",
            "Mean records processed by the pipeline's succeeded and failed runs.",
            labels=labels,
        )
        streak = GaugeMetricFamily(
            "pipewarden_pipeline_consecutive_failures",
            "Failed runs of the pipeline since its latest success.",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "pipewarden_pipeline_in_flight",
            "Runs reported RUNNING and not yet ended.",
            labels=labels,
        )
        last = GaugeMetricFamily(
            "pipewarden_pipeline_last_execution_timestamp_seconds",
            "Event time of the pipeline's latest counted run, Unix seconds.",
            labels=labels,
        )
        runs = CounterMetricFamily(
            "pipewarden_pipeline_executions",
            "The pipeline's counted runs, by final status.",
            labels=[*labels, "status"],
        )
        shown = 0
        for p in states:
            shown += 1
            values = [p.pipeline_id, p.team]
            rate.add_metric(values, p.success_rate)
            duration.add_metric(values, p.avg_duration)
            records.add_metric(values, p.avg_records)
            streak.add_metric(values, p.consecutive_failures)
            in_flight.add_metric(values, len(p.in_flight) if p.in_flight else 0)
            if p.last_time is not None:
                last.add_metric(values, p.last_time)
            runs.add_metric([*values, "succeeded"], p.succeeded)
            runs.add_metric([*values, "failed"], p.failed)
            runs.add_metric([*values, "cancelled"], p.cancelled)
        yield from (rate, duration, records, streak, in_flight, last, runs)
        omitted = GaugeMetricFamily(
            "pipewarden_pipeline_series_omitted",
            "Pipelines without series of their own because of metrics.max_pipeline_series.",
        )
        omitted.add_metric([], total - shown)
        yield omitted

    def _teams(self) -> Iterator[Metric]:
        labels = ["team"]
        pipelines = GaugeMetricFamily(
            "pipewarden_team_pipelines", "The team's pipelines.", labels=labels
        )
        failing = GaugeMetricFamily(
            "pipewarden_team_failing_pipelines",
            "The team's pipelines whose latest counted run failed.",
            labels=labels,
        )
        rate = GaugeMetricFamily(
            "pipewarden_team_success_rate",
            "succeeded / (succeeded + failed) over all of the team's runs; 0 when none.",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            "pipewarden_team_avg_duration_seconds",
            "Mean duration of the team's succeeded and failed runs of known duration.",
            labels=labels,
        )
        records = GaugeMetricFamily(
            "pipewarden_team_avg_records",
            "Mean records processed by the team's succeeded and failed runs.",
            labels=labels,
        )
        runs = CounterMetricFamily(
            "pipewarden_team_executions",
            "The team's counted runs, by final status.",
            labels=[*labels, "status"],
        )
        for team in self.shards.teams():
            t = self.shards.team_totals(team)
            if t is None:
                continue
            judged = t.succeeded + t.failed
            pipelines.add_metric([team], t.pipelines)
            failing.add_metric([team], t.failing)
            rate.add_metric([team], t.succeeded / judged if judged else 0.0)
            duration.add_metric(
                [team], t.duration_sum / t.duration_count if t.duration_count else 0.0
            )
            records.add_metric([team], t.records_sum / judged if judged else 0.0)
            runs.add_metric([team, "succeeded"], t.succeeded)
            runs.add_metric([team, "failed"], t.failed)
            runs.add_metric([team, "cancelled"], t.cancelled)
        yield from (pipelines, failing, rate, duration, records, runs)


def queue_gauges(
    registry: CollectorRegistry, depths: dict[str, tuple[str, Callable[[], float]]]
) -> None:
    """Register callback gauges: name -> (help, function read at scrape time)."""
    for name, (text, read) in depths.items():
        Gauge(name, text, registry=registry).set_function(read)


def node_registry(shards: ShardSet, settings: MetricsSettings) -> CollectorRegistry:
    """A node's registry: the process-wide metrics and the node's fleet health. The node adds
    its queue depths (and later parts their own collectors) to it."""
    registry = CollectorRegistry()
    registry.register(_DefaultRegistry())
    registry.register(FleetCollector(shards, settings))
    return registry


class AlertCollector(Collector):
    """`pipewarden_alerts_firing{team, severity}`: open alerts (firing or acknowledged), read
    from the alert book at scrape time; silenced ones and those explained by an upstream cause
    included, since they are open all the same."""

    def __init__(self, alerts: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self._alerts = alerts
        """(team, severity number) of each open alert."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "pipewarden_alerts_firing",
            "Open alerts (firing or acknowledged), by team and severity.",
            labels=["team", "severity"],
        )
        counts: dict[tuple[str, int], int] = {}
        for key in self._alerts():
            counts[key] = counts.get(key, 0) + 1
        for (team, severity), n in sorted(counts.items()):
            family.add_metric([team, SEVERITY_NAMES.get(severity, str(severity))], n)
        yield family
