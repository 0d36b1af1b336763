"""The detection seams: a detector reads state and finds anomalies; an alert sink receives them.

The defaults here do nothing, so ingestion runs without detection until real detectors are
plugged in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pipewarden.server.core.shards import PipelineState, ShardSet

__all__ = ["AlertSink", "Anomaly", "Detector", "FanoutSink", "NullDetector", "NullSink"]


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One current deviation of one pipeline."""

    pipeline_id: str
    """The pipeline that deviates."""
    team: str
    """Its team."""
    kind: int
    """A pipewarden.v1.AnomalyKind number."""
    severity: int
    """A pipewarden.v1.Severity number."""
    message: str
    """What was observed and what was expected, in words with the numbers."""
    observed: float
    """The observed value in the metric's unit."""
    expected: float
    """The expected value or threshold in the metric's unit."""
    unit: str
    """The unit: ratio, seconds, records or runs."""
    after_runs: int = 0
    """Runs of the pipeline since the deviation was last true; 0 while it holds. A failure
    streak that a success ended before it was judged is reported with the runs since, so its
    alert fires and is already clear for them."""


class Detector(Protocol):
    """Finds the anomalies of one pipeline, reading its state and the fleet's."""

    def evaluate(self, pipeline: PipelineState, fleet: ShardSet, now: float) -> Sequence[Anomaly]:
        """The pipeline's current anomalies (empty when it is healthy)."""
        ...

    def urgent(self, pipeline: PipelineState) -> bool:
        """Whether the runs just applied may page (a failure streak that crossed a threshold
        since it was last judged, however many failures it grew by): the pipeline is judged at
        once, not in the next detection pass. Cheap: asked once per request of every pipeline
        whose streak grew in it."""
        ...


class AlertSink(Protocol):
    """Receives each evaluated pipeline's current anomalies."""

    def receive(self, pipeline: PipelineState, anomalies: Sequence[Anomaly], now: float) -> None:
        """Take the pipeline's anomalies as of `now`; an empty list means it is healthy."""
        ...


class NullDetector:
    """Finds nothing."""

    def evaluate(self, pipeline: PipelineState, fleet: ShardSet, now: float) -> Sequence[Anomaly]:
        """No anomalies."""
        return ()

    def urgent(self, pipeline: PipelineState) -> bool:
        """Never."""
        return False


class NullSink:
    """Drops what it receives."""

    def receive(self, pipeline: PipelineState, anomalies: Sequence[Anomaly], now: float) -> None:
        """Nothing to do."""


class FanoutSink:
    """Hands what it receives to several sinks, in order."""

    def __init__(self, *sinks: AlertSink) -> None:
        self.sinks = sinks

    def receive(self, pipeline: PipelineState, anomalies: Sequence[Anomaly], now: float) -> None:
        """Pass the verdict on to every sink."""
        for sink in self.sinks:
            sink.receive(pipeline, anomalies, now)
