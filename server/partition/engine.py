"""The partition engine: everything about one slice of the fleet, in one object.

A Partition owns its shards and the execution ids it remembers, ingestion, detection and its
scheduling, alerts and anomalies, the snapshots and the recovery of its state, and the outbox of
its notifications. It takes its event log through the EventLog seam, and owns its background
tasks: each loop belongs to the object whose state it changes (the partition: stats, settling
restored ids, snapshots, alert timers; its DetectionLoop: detection). Standalone, `serve` runs
one partition over the whole fleet; what needs the whole fleet goes through `Fleet`
(server/partition/fleet.py).

Its life: `fork_prefetch()` (optional, before any thread starts), `start()` (recover, send what
the outbox held, start the loops), `stop()` (end the loops and the WatchAlerts streams, before
the servers drain), `close(grace)` (let the notifiers drain, write a snapshot, make the log
durable). A log that fails stops the partition: `failure` says why and `failed` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipewarden.notifiers.config import Receiver, Route
from pipewarden.notifiers.dispatcher import Dispatcher
from pipewarden.server.alerting.feed import AlertFeed
from pipewarden.server.alerting.manager import AlertManager
from pipewarden.server.alerting.settings import AlertSettings
from pipewarden.server.base import metrics, tasks
from pipewarden.server.base.errors import DiskError, LogError, PipewardenError
from pipewarden.server.core.dedup import SeenExecutions
from pipewarden.server.core.detect import FanoutSink
from pipewarden.server.core.ingest import Ingestor, IngestOutcome
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.shards import ShardSet
from pipewarden.server.detection.anomalies import AnomalyStore
from pipewarden.server.detection.engine import DetectionEngine
from pipewarden.server.detection.settings import DetectionSettings
from pipewarden.server.partition.notifier import AlertNotifier
from pipewarden.server.partition.prefetch import Prefetch
from pipewarden.server.partition.recovery import recover
from pipewarden.server.partition.scheduling import DetectionLoop
from pipewarden.server.partition.snapshot import SnapshotStore
from pipewarden.server.storage import descriptors
from pipewarden.server.storage.eventlog import EventLog
from pipewarden.server.storage.wal import WriteAheadLog
from pipewarden.v1 import service_pb2

__all__ = [
    "ALERT_TICK_SECONDS",
    "SNAPSHOT_CHANGED_PIPELINES",
    "SNAPSHOT_CHECK_SECONDS",
    "STATS_INTERVAL_SECONDS",
    "Partition",
    "PartitionSettings",
]

log = logging.getLogger("pipewarden")

STATS_INTERVAL_SECONDS = 10.0
SNAPSHOT_CHECK_SECONDS = 0.2
SNAPSHOT_CHANGED_PIPELINES = 200_000
"""A snapshot is also taken once this many pipelines changed since the last one began, so that
the stop's snapshot (a delta of what changed since) stays within a few seconds at any fleet
size."""
ALERT_TICK_SECONDS = 1.0
"""How often alert timers (escalation, repeats, holds, silences) are checked, and root causes
judged again for every open alert."""


@dataclass(frozen=True)
class PartitionSettings:
    """What a partition reads of the configuration (the wiring builds it from `Config`)."""

    data_dir: Path
    """Its log (wal/), snapshots (snapshots/) and outbox (outbox/) live here."""
    shards: int = 16
    """server.shards."""
    window: int = 64
    """server.window: runs kept per pipeline."""
    max_seen_executions: int = 5_000_000
    """server.max_seen_executions."""
    dedup_retention_seconds: float = 14 * 86400.0
    """server.dedup_retention_seconds."""
    fsync: str = "always"
    """server.fsync."""
    fsync_interval_seconds: float = 0.1
    """server.fsync_interval_seconds."""
    wal_segment_bytes: int = 64 * 1024 * 1024
    """server.wal_segment_bytes."""
    snapshot_interval_seconds: float = 300.0
    """server.snapshot_interval_seconds."""
    snapshot_log_bytes: int = 256 * 1024 * 1024
    """server.snapshot_log_bytes."""
    limits: IngestLimits = field(default_factory=IngestLimits)
    """server.limits."""
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    """The detection: section."""
    alerts: AlertSettings = field(default_factory=AlertSettings)
    """The alerts: section."""
    receivers: tuple[Receiver, ...] = ()
    """The receivers: section."""
    routes: tuple[Route, ...] = ()
    """The routes: section."""


class Partition:
    """One slice of the fleet: its state, its log, its loops."""

    def __init__(
        self,
        settings: PartitionSettings,
        *,
        event_log: EventLog | None = None,
        repair: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        """The time for event-time fallbacks, detection and alert timers (tests inject one)."""
        self.repair = repair
        s = settings
        data = s.data_dir
        self.shards = ShardSet(s.shards, s.window)
        self.seen = SeenExecutions(s.max_seen_executions, s.dedup_retention_seconds)
        self.log: EventLog = event_log or WriteAheadLog(
            data / "wal",
            fsync=s.fsync,
            fsync_interval=s.fsync_interval_seconds,
            segment_bytes=s.wal_segment_bytes,
            repair=repair,
            on_failure=self._log_failed,
        )
        if isinstance(self.log, WriteAheadLog) and self.log.on_failure is None:
            self.log.on_failure = self._log_failed
        self.snapshots = SnapshotStore(data / "snapshots")
        self.anomalies = AnomalyStore()
        self.alert_feed = AlertFeed(self.log)
        self.alerts = AlertManager(s.alerts, self.log, self.alert_feed, clock=clock)
        self.notifier = AlertNotifier(
            Dispatcher(
                s.receivers, s.routes, data_dir=data, fsync=s.fsync, clock=clock, repair=repair
            ),
            self.alert_feed,
            self.alerts,
            self.log,
            clock=clock,
        )
        """Alert events to the receivers (notifiers/), through the outbox, caught up after a
        restart."""
        self.engine = DetectionEngine(s.detection)
        self.ingestor = Ingestor(
            self.shards,
            self.seen,
            self.log,
            s.limits,
            detector=self.engine if s.detection.enabled else None,
            sink=FanoutSink(self.anomalies, self.alerts),
            clock=clock,
            defer_detection=True,
        )
        self.detection = DetectionLoop(self.ingestor, self.shards, self.engine, self.alerts, clock)
        self.failure: PipewardenError | None = None
        """Why the partition stopped on its own (its log failed, or its snapshot at close)."""
        self.failed = asyncio.Event()
        """Set when the partition stops on its own (`failure` says why)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._prefetch: Prefetch | None = None
        self._snapshot_lock = asyncio.Lock()
        self._periodic: asyncio.Future[Path | None] | None = None
        self._log_bytes_at_snapshot = 0
        self._snapshot_time = time.monotonic()
        self._started = False
        self._stopped = False
        self._closed = False

    # -- life ------------------------------------------------------------------------------------

    def fork_prefetch(self) -> None:
        """Fork the replay prefetch (server/partition/prefetch.py) when the log's tail is long
        enough to be worth it. Before anything starts a thread: a fork copies only the caller's."""
        if isinstance(self.log, WriteAheadLog) and self._prefetch is None and not self._started:
            s = self.settings
            self._prefetch = Prefetch.start(s.data_dir / "wal", s.data_dir / "snapshots", s.limits)

    async def start(self) -> None:
        """Recover (the newest snapshot, then the log after it), send what the outbox held and
        what receivers missed, and start the loops. Idempotent."""
        if self._started:
            return
        self._started = True
        await self._recover()
        # Pages pending from before a restart go out before anything new happens.
        await self.notifier.start()
        self._tasks.append(tasks.spawn(self._report_stats(), name="stats"))
        self._tasks.append(tasks.spawn(self._settle_ids(), name="settle-ids"))
        self._tasks.append(tasks.spawn(self._snapshot_loop(), name="snapshots"))
        self.alert_feed.start()
        self._tasks.append(tasks.spawn(self._alert_loop(), name="alert-timers"))
        if self.settings.detection.enabled:
            self.detection.start()

    async def stop(self) -> None:
        """End the loops and the WatchAlerts streams (which never end by themselves), so that
        only ingest streams are left to drain. Idempotent; `close` calls it too."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            await tasks.stop(task)
        await self.detection.close()
        self.alert_feed.close_subscriptions()

    async def close(self, grace: float = 0.0) -> None:
        """Let the notifiers drain within `grace` seconds, write a snapshot (unless the
        partition failed or never started), and make the log durable. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._prefetch is not None:  # a start that failed before recovery
            self._prefetch.close()
            self._prefetch = None
        await self.stop()
        await self.alert_feed.close()
        try:
            await self.notifier.close(grace)
        except Exception as e:  # the snapshot and the log's flush must still happen
            log.error("notifiers did not stop cleanly: %s", e)
        periodic = self._periodic  # a snapshot that the stop found under way (_snapshot_loop)
        if periodic is not None:
            if self.failure is not None:  # the state may be half changed: not written
                periodic.cancel()
            await asyncio.wait([periodic])
            error = None if periodic.cancelled() else periodic.exception()
            if isinstance(error, DiskError):
                self._log_failed(error)
            elif error is not None:
                log.error("snapshot failed: %s", error)
        try:
            if self.failure is None and self._tasks:
                await self.snapshot()
        except (OSError, LogError) as e:  # what was acknowledged is in the log, flushed below
            self.failure = e if isinstance(e, LogError) else LogError(f"snapshot failed: {e}")
            log.error("%s; stopping without a snapshot", self.failure)
        except Exception as e:  # a bug: the log's flush must still happen, and it has all
            log.exception("no snapshot at stop (the next start replays the log): %s", e)
            self.failure = PipewardenError(f"the snapshot at stop failed: {e}")
        finally:
            await self.log.close()

    # -- ingestion -------------------------------------------------------------------------------

    def ingest(
        self, raw: bytes, request: service_pb2.IngestRequest, team: str | None = None
    ) -> tuple[IngestOutcome, int]:
        """Apply one request (see Ingestor.ingest); return its outcome and the log position to
        wait for (`wait_durable`). Failure streaks that just reached an alerting length are
        judged here, in the request; the rest wait for the next detection pass."""
        try:
            outcome, seq = self.ingestor.ingest(raw, request, team)
        except LogError as e:  # the log refuses: whatever its kind, the partition stops
            self.fail(e)
            raise
        urgent = self.ingestor.take_urgent()
        if urgent:
            self.detection.judge_now(urgent)
        if self.ingestor.pending:
            self.detection.wake()
        return outcome, seq

    async def wait_durable(self, seq: int) -> None:
        """Return once the log is durable up to `seq`; LogError if it cannot be, and then the
        partition stops (a log of any kind: the write-ahead log also says so at once, through
        its on_failure, for the requests that are not waiting)."""
        try:
            await self.log.wait_durable(seq)
        except LogError as e:
            self.fail(e)
            raise

    # -- durability ------------------------------------------------------------------------------

    async def _recover(self) -> None:
        done = await recover(
            self.snapshots,
            self.log,
            self.ingestor,
            self.shards,
            self.seen,
            repair=self.repair,
            alerts=self.alerts,
            prefetch=self._prefetch,
        )
        self._prefetch = None
        self.alerts.learn_lineage(self.shards.pipelines())
        metrics.PIPELINES.set(len(self.shards))
        self._log_bytes_at_snapshot = self.log.size_bytes()
        log.info(
            "recovered in %.2fs: %d pipelines, %d events replayed from %d log entries, "
            "%d open alerts",
            done.seconds,
            len(self.shards),
            done.events,
            done.entries,
            self.alerts.book.open_count(),
        )

    async def snapshot(self) -> Path | None:
        """Write a snapshot now, prune old ones and the log they cover."""
        if self.failure is not None:
            return None
        async with self._snapshot_lock:
            self._snapshot_time = time.monotonic()
            size = self.log.size_bytes()
            path = await self.snapshots.write(
                self.shards, self.seen, self.log, alerts=self.alerts.dump
            )
            self._log_bytes_at_snapshot = size
            oldest = await asyncio.to_thread(self.snapshots.prune)
            if oldest is not None:
                dropped = await self.log.truncate_before(oldest)
                if dropped:
                    log.info("deleted %d log segment(s) covered by snapshot %d", dropped, oldest)
                self._log_bytes_at_snapshot = self.log.size_bytes()
            return path

    def fail(self, error: PipewardenError) -> None:
        """Stop on account of `error` (the first one is kept: what follows are its effects):
        `failed` is set, and `close` writes no snapshot, since the state may be half changed;
        the log holds everything acknowledged, and the next start replays it."""
        if self.failure is None:
            self.failure = error
        self.failed.set()

    def _log_failed(self, error: LogError) -> None:
        """The log cannot write: the partition stops (what it acknowledged is in the log)."""
        self.fail(error)

    # -- loops -----------------------------------------------------------------------------------

    async def _snapshot_loop(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(SNAPSHOT_CHECK_SECONDS)
            descriptors.SPARES.hold()  # again, if an open had to give one up
            grown = self.log.size_bytes() - self._log_bytes_at_snapshot
            due = s.snapshot_interval_seconds > 0 and (
                time.monotonic() - self._snapshot_time >= s.snapshot_interval_seconds
            )
            changed = self.shards.changed >= SNAPSHOT_CHANGED_PIPELINES
            if grown >= s.snapshot_log_bytes or (due and grown > 0) or changed:
                try:
                    # Not cancelled by a stop: a snapshot under way is finished (with ingestion
                    # stopped, quickly), and the stop's own is then the delta after it.
                    self._periodic = asyncio.ensure_future(self.snapshot())
                    await asyncio.shield(self._periodic)
                    self._periodic = None
                except DiskError as e:  # the log, on the same disk, would fail next: stop now
                    self._periodic = None
                    self._log_failed(e)
                    return
                except (OSError, LogError) as e:
                    self._periodic = None
                    log.error("snapshot failed: %s", e)

    async def _alert_loop(self) -> None:
        """Alert timers: escalation, repeats, holds, silences starting and ending; and root
        causes judged again."""
        try:
            while True:
                await asyncio.sleep(ALERT_TICK_SECONDS)
                self.alerts.tick()
        except LogError as e:
            log.error("alert timers stopped: the log failed: %s", e)

    async def _settle_ids(self) -> None:
        """Once serving, turn the execution ids restored from the snapshot into live ones, a
        slice at a time between requests (see SeenExecutions.settle): restoring them in their
        compact form is what makes a restart quick, and after this, checking a new id costs
        what it did before the restart."""
        began = time.perf_counter()
        done = 0
        for count in self.seen.settle():
            done = count
            await asyncio.sleep(0)
        if done and self.seen.restored is None:
            log.info(
                "the %d execution ids restored from the snapshot are in the live set (%.2fs)",
                done,
                time.perf_counter() - began,
            )

    async def _report_stats(self) -> None:
        last = -1.0
        while True:
            await asyncio.sleep(STATS_INTERVAL_SECONDS)
            total = metrics.EXECUTIONS._value.get()
            if total != last:
                log.info(
                    "%d executions counted, %d pipelines, %d execution ids remembered",
                    total,
                    len(self.shards),
                    len(self.seen),
                )
                last = total

    # -- what /metrics shows ---------------------------------------------------------------------

    def gauges(self) -> Mapping[str, tuple[str, Callable[[], float]]]:
        """The partition's queue gauges for /metrics: name -> (help, value)."""
        wal = self.log if isinstance(self.log, WriteAheadLog) else None
        return {
            "pipewarden_log_unsynced_entries": (
                "Log entries appended but not yet durable (requests waiting on the log).",
                lambda: wal.last_seq - wal.durable_seq if wal else 0,
            ),
            "pipewarden_log_bytes": ("Bytes in the write-ahead log.", self.log.size_bytes),
            "pipewarden_detection_pending_pipelines": (
                "Pipelines touched by ingestion and waiting for detection.",
                lambda: len(self.ingestor.pending),
            ),
        }
