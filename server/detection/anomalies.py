"""The current anomalies of every pipeline: what ListAnomalies answers.

Implements the AlertSink seam: each evaluation hands over a pipeline's complete list of current
anomalies, so what is not in the list has cleared. An anomaly remembers when its episode began.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipewarden.server.core.detect import Anomaly
from pipewarden.server.core.shards import PipelineState

__all__ = ["AnomalyStore", "CurrentAnomaly"]


@dataclass(frozen=True, slots=True)
class CurrentAnomaly:
    """An anomaly and when its episode began."""

    anomaly: Anomaly
    detected_at: float


class AnomalyStore:
    """Current anomalies by pipeline and kind."""

    def __init__(self) -> None:
        self._by_pipeline: dict[str, dict[int, CurrentAnomaly]] = {}

    def receive(self, pipeline: PipelineState, anomalies: Sequence[Anomaly], now: float) -> None:
        """Replace the pipeline's anomalies with `anomalies` (evaluated at `now`)."""
        before = self._by_pipeline.get(pipeline.pipeline_id)
        if not anomalies:
            if before:
                del self._by_pipeline[pipeline.pipeline_id]
            return
        current: dict[int, CurrentAnomaly] = {}
        for a in anomalies:
            previous = before.get(a.kind) if before else None
            since = previous.detected_at if previous is not None else now
            current[a.kind] = CurrentAnomaly(a, since)
        self._by_pipeline[pipeline.pipeline_id] = current

    def list(
        self, *, team: str = "", pipeline_id: str = "", min_severity: int = 0
    ) -> list[CurrentAnomaly]:
        """Matching anomalies, most severe first, then by pipeline and kind."""
        if pipeline_id:
            found = self._by_pipeline.get(pipeline_id)
            groups = [found] if found else []
        else:
            groups = list(self._by_pipeline.values())
        out = [
            c
            for group in groups
            for c in group.values()
            if (not team or c.anomaly.team == team) and c.anomaly.severity >= min_severity
        ]
        out.sort(key=lambda c: (-c.anomaly.severity, c.anomaly.pipeline_id, c.anomaly.kind))
        return out

    def __len__(self) -> int:
        return sum(len(g) for g in self._by_pipeline.values())
