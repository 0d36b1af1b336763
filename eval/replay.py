"""Replay the scenario's steps through the real ingest path with one detector configuration.

The Ingestor is the server's own, with an in-memory log, a simulated clock, the detection engine
as its detector and a Recorder as its alert sink. After each step's request, the pipelines whose
deadlines have passed (`engine.due`) are evaluated again, as the server's deadline loop would,
so staleness and stuck runs are noticed without any event.

When the warm-up ends the recorder starts afresh: what was raised during it is forgotten, and
the pipelines that had anomalies are evaluated again, so that a verdict that never cleared (a
pipeline slow by nature, flagged from its first runs) counts as raised at that instant.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from eval.feed import Step
from pipewarden.server.core.dedup import SeenExecutions
from pipewarden.server.core.detect import Anomaly
from pipewarden.server.core.ingest import Ingestor
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.shards import PipelineState, ShardSet
from pipewarden.server.detection.engine import DetectionEngine
from pipewarden.server.detection.settings import DetectionSettings
from pipewarden.server.storage.eventlog import MemoryLog

__all__ = ["Raised", "Recorder", "replay"]


@dataclass(frozen=True, slots=True)
class Raised:
    """An anomaly of a kind the pipeline did not have at its previous evaluation."""

    time: float
    kind: int
    severity: int
    message: str
    observed: float
    expected: float


@dataclass(slots=True)
class Recorder:
    """An AlertSink that remembers when each kind of anomaly was raised on each pipeline, and
    when it cleared."""

    active: dict[str, dict[int, Raised]] = field(default_factory=dict)
    """Per pipeline, its current kinds and when each was raised."""
    raised: dict[str, list[Raised]] = field(default_factory=dict)
    """Per pipeline, every raise, in time order."""
    cleared: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    """Per pipeline, (time, kind) of every clearance."""
    evaluations: int = 0
    warmup_flagged: int = 0
    """Pipelines that had an anomaly raised during the warm-up (set by `rebase`)."""

    def receive(self, pipeline: PipelineState, anomalies: Sequence[Anomaly], now: float) -> None:
        """Take the pipeline's complete current anomaly list."""
        self.evaluations += 1
        pid = pipeline.pipeline_id
        before = self.active.get(pid)
        if not anomalies and not before:
            return
        now_active: dict[int, Raised] = {}
        for a in anomalies:
            if a.kind in now_active:
                continue
            since = before.get(a.kind) if before else None
            if since is None:
                since = Raised(now, a.kind, a.severity, a.message, a.observed, a.expected)
                self.raised.setdefault(pid, []).append(since)
            now_active[a.kind] = since
        if before:
            for kind in before.keys() - now_active.keys():
                self.cleared.setdefault(pid, []).append((now, kind))
        if now_active:
            self.active[pid] = now_active
        else:
            self.active.pop(pid, None)

    def rebase(self) -> list[str]:
        """Forget everything; return the pipelines that had anomalies, to evaluate again."""
        self.warmup_flagged = len(self.raised)
        active = list(self.active)
        self.active, self.raised, self.cleared = {}, {}, {}
        return active


def replay(
    steps: Sequence[Step],
    settings: DetectionSettings,
    enabled: Collection[str] | None,
    scored_from: float = float("-inf"),
    after_step: Callable[[float, ShardSet], None] | None = None,
) -> tuple[Recorder, DetectionEngine, ShardSet]:
    """Feed every step to a fresh Ingestor with this configuration; return what was raised
    from `scored_from` on, and the engine and state as they are at the end. `after_step` is
    called with the clock and the state after each step (to look at pipelines as they were)."""
    engine = DetectionEngine(settings, enabled=enabled)
    recorder = Recorder()
    shards = ShardSet(16, 64)
    clock = [steps[0].now if steps else 0.0]
    ingestor = Ingestor(
        shards,
        SeenExecutions(10**8),
        MemoryLog(),
        IngestLimits(),
        detector=engine,
        sink=recorder,
        clock=lambda: clock[0],
    )
    warm = scored_from > float("-inf")
    for step in steps:
        now = clock[0] = step.now
        if step.request is not None:
            ingestor.ingest(step.raw, step.request)
        again = engine.due(now)
        if warm and now >= scored_from:
            again += recorder.rebase()
            warm = False
        for pid in dict.fromkeys(again):
            state = shards.get(pid)
            if state is not None:
                recorder.receive(state, engine.evaluate(state, shards, now), now)
        if after_step is not None:
            after_step(now, shards)
    return recorder, engine, shards
