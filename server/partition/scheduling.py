"""Detection's scheduling in a partition: passes over what ingestion touched, in slices, and a
share of the CPU that shrinks when the process is busy.

The loop belongs to the partition's detection (`DetectionLoop`), which changes the partition's
anomalies and alerts; ingestion only leaves pipelines pending, and the partition wakes the loop
after each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from pipewarden.server.alerting.manager import AlertManager
from pipewarden.server.base import tasks
from pipewarden.server.base.errors import LogError
from pipewarden.server.core.ingest import Ingestor
from pipewarden.server.core.shards import PipelineState, ShardSet
from pipewarden.server.detection.engine import DetectionEngine

__all__ = [
    "BUSY_CPU_SHARE",
    "DETECTION_COALESCE_SECONDS",
    "DETECTION_INTERVAL_SECONDS",
    "DETECTION_PAUSE",
    "DETECTION_SLICE_SECONDS",
    "DetectionLoop",
]

log = logging.getLogger("pipewarden")

DETECTION_INTERVAL_SECONDS = 0.05
"""How often detection looks for passed deadlines (staleness, stuck runs) when nothing
arrives."""
DETECTION_COALESCE_SECONDS = 0.005
"""The pause after each pass: a pipeline's runs that arrive meanwhile are judged once, in the
next pass; what arrives later wakes detection at once."""
DETECTION_SLICE_SECONDS = 0.002
"""How long detection evaluates before it lets requests in: a request waits behind at most one
slice (a pipeline's evaluation takes 20-200 µs)."""
BUSY_CPU_SHARE = 0.25
"""Above this much of a core used by the process, detection pauses after each slice
DETECTION_PAUSE times as long as the slice took (see _evaluate_in_slices); below it there is
room to spare. At 0.5, detection of a busy fleet grew into every spare cycle up to half a core,
and the log's writer thread, waiting for the GIL after each write and fsync, held answers back
(bench latency at 200 requests/s: p99 99 ms, against 7.4 ms at 0.25)."""
DETECTION_PAUSE = 8
"""So that, when busy, detection passes take at most a ninth of the process. Failure streaks
that page are judged at once, outside the passes (see DetectionLoop.judge_now)."""


class DetectionLoop:
    """Runs detection over one partition's pipelines: what ingestion left pending, and those
    whose deadline passed. Owns its task (`start`, idempotent `close`)."""

    def __init__(
        self,
        ingestor: Ingestor,
        shards: ShardSet,
        engine: DetectionEngine,
        alerts: AlertManager,
        clock: Callable[[], float],
    ) -> None:
        self.ingestor = ingestor
        self.shards = shards
        self.engine = engine
        self.alerts = alerts
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cpu_mark = (time.perf_counter(), time.process_time())
        self._cpu_share = 0.0

    def wake(self) -> None:
        """Something is pending: start the next pass now rather than at the next interval."""
        self._wake.set()

    def start(self) -> None:
        """Start the loop; its first pass judges every pipeline once (after recovery)."""
        if self._task is None:
            self._task = tasks.spawn(self._run(), name="detection")

    async def close(self) -> None:
        """Stop the loop. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            await tasks.stop(task)

    def judge_now(self, pipelines: list[PipelineState]) -> None:
        """Judge, in the ingest request that made them, the failure streaks that just reached
        their alerting length, and announce their alerts: a page does not wait for a detection
        pass, which under load takes a while. Pipelines failing together in one request are
        judged side by side, so that a root cause explains the failures downstream of it."""
        self.ingestor.evaluate(pipelines)
        self.alerts.flush(self.clock())

    async def _run(self) -> None:
        """Evaluate what ingestion touched as soon as it is left pending, and the pipelines
        whose staleness or stuck-run deadline has passed; first, every recovered pipeline once.
        Under load a pass takes a while (see _evaluate_in_slices), and a pipeline's many runs
        meanwhile are judged once, in the next."""
        try:
            await self._evaluate_in_slices(list(self.shards.pipelines()))
            while True:
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(DETECTION_INTERVAL_SECONDS):
                            await self._wake.wait()
                self._wake.clear()
                due = [self.shards.get(pid) for pid in self.engine.due(self.clock())]
                pipelines = self.ingestor.take_pending() + [p for p in due if p is not None]
                if pipelines:
                    await self._evaluate_in_slices(pipelines)
                await asyncio.sleep(DETECTION_COALESCE_SECONDS)
        except LogError as e:
            log.error("detection stopped: the log failed: %s", e)

    async def _evaluate_in_slices(self, pipelines: list[PipelineState]) -> None:
        """Evaluate in slices, so that no request waits behind more than one. When the process
        is busy, each slice is followed by a pause DETECTION_PAUSE times as long, so that
        detection takes a small share of it; when it is not, passes end sooner and alerts go
        out sooner. After the last slice, the alerts the pass changed are logged and announced
        together, so that a root cause and the failures it explains are judged side by side."""
        start, count = 0, len(pipelines)
        while start < count:
            began = time.perf_counter()
            end = began + DETECTION_SLICE_SECONDS
            while start < count:
                # Four to a call: evaluate() reads the server clock once per call.
                self.ingestor.evaluate(pipelines[start : start + 4])
                start += 4
                if time.perf_counter() >= end:
                    break
            if start >= count:
                self.alerts.flush(self.clock())
            took = time.perf_counter() - began
            await asyncio.sleep(DETECTION_PAUSE * took if self._busy() else 0)

    def _busy(self) -> bool:
        """Whether the process used more than BUSY_CPU_SHARE of a core lately (over the last
        tenth of a second or so)."""
        wall, cpu = time.perf_counter(), time.process_time()
        if wall - self._cpu_mark[0] >= 0.1:
            self._cpu_share = (cpu - self._cpu_mark[1]) / (wall - self._cpu_mark[0])
            self._cpu_mark = (wall, cpu)
        return self._cpu_share > BUSY_CPU_SHARE
