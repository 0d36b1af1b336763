"""Wiring: builds every part from the configuration, starts them in order, stops them in reverse.

Start: restore the newest snapshot, replay the log after it, start the notifiers (what their
outbox held is sent again, and what the alerts' state says receivers missed is sent), listen for
gRPC and HTTP, then report SERVING (gRPC health and /readyz say NOT_SERVING until recovery is
done). Stop (SIGTERM or SIGINT): report NOT_SERVING, end the WatchAlerts streams, let other open
streams finish within the grace period, let the notifiers catch up and drain within the grace
period, write a snapshot, make the log durable, stop HTTP. A log that cannot write stops the
server with exit status 1, and so does a disk that is full (or failing) under any of its files:
one error line "disk full: <path>: …" says which; what was acknowledged stays in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pipewarden.notifiers.dispatcher import Dispatcher
from pipewarden.server.alerting.feed import AlertFeed
from pipewarden.server.alerting.manager import AlertManager
from pipewarden.server.api import tls
from pipewarden.server.api.auth import Authenticator
from pipewarden.server.api.collector import AlertCollector, node_registry, queue_gauges
from pipewarden.server.api.servicer import SERVICE_NAME, PipelineMonitorService
from pipewarden.server.base import metrics, tasks
from pipewarden.server.base.confparse import parse_hostport
from pipewarden.server.base.errors import DiskError, LogError, PipewardenError, TaskDied
from pipewarden.server.config import Config, check_exposure
from pipewarden.server.core import compiled
from pipewarden.server.core.dedup import SeenExecutions
from pipewarden.server.core.detect import FanoutSink
from pipewarden.server.core.ingest import Ingestor
from pipewarden.server.core.shards import PipelineState, ShardSet
from pipewarden.server.detection.anomalies import AnomalyStore
from pipewarden.server.detection.engine import DetectionEngine
from pipewarden.server.notifier import AlertNotifier
from pipewarden.server.openlineage.mapping import Translator
from pipewarden.server.openlineage.producers import DatasetProducers
from pipewarden.server.partition.prefetch import Prefetch
from pipewarden.server.partition.recovery import recover
from pipewarden.server.partition.snapshot import SnapshotStore
from pipewarden.server.storage import descriptors, lockfile
from pipewarden.server.storage.eventlog import EventLog
from pipewarden.server.storage.wal import WriteAheadLog

if TYPE_CHECKING:
    from pipewarden.server.api.http import HttpServer

__all__ = ["App", "run", "serve"]

log = logging.getLogger("pipewarden")

STATS_INTERVAL_SECONDS = 10.0
SNAPSHOT_CHECK_SECONDS = 0.2
SNAPSHOT_CHANGED_PIPELINES = 200_000
"""A snapshot is also taken once this many pipelines changed since the last one began, so that
the stop's snapshot (a delta of what changed since) stays within a few seconds at any fleet
size."""
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
that page are judged at once, outside the passes (see _judge_now)."""
ALERT_TICK_SECONDS = 1.0
"""How often alert timers (escalation, repeats, holds, silences) are checked, and root causes
judged again for every open alert."""


class App:
    """One Pipewarden node."""

    def __init__(
        self,
        config: Config,
        *,
        event_log: EventLog | None = None,
        repair: bool = False,
        clock: Callable[[], float] = time.time,
        prefetch: bool = False,
    ) -> None:
        self.config = config
        self.prefetch = prefetch
        """Whether a start may fork a helper process to convert a long log tail while the
        snapshot loads (server/partition/prefetch.py); `pipewarden serve` does."""
        self.clock = clock
        """The server's time for event-time fallbacks, detection and alert timers (tests
        inject one to move time)."""
        sc = config.server
        self.repair = repair
        data = Path(sc.data_dir)
        self.shards = ShardSet(sc.shards, sc.window)
        self.seen = SeenExecutions(sc.max_seen_executions, sc.dedup_retention_seconds)
        self.log: EventLog = event_log or WriteAheadLog(
            data / "wal",
            fsync=sc.fsync,
            fsync_interval=sc.fsync_interval_seconds,
            segment_bytes=sc.wal_segment_bytes,
            repair=repair,
            on_failure=self._log_failed,
        )
        if isinstance(self.log, WriteAheadLog) and self.log.on_failure is None:
            self.log.on_failure = self._log_failed
        self.snapshots = SnapshotStore(data / "snapshots")
        self.anomalies = AnomalyStore()
        self.alert_feed = AlertFeed(self.log)
        self.alerts = AlertManager(config.alerts, self.log, self.alert_feed, clock=clock)
        self.notifier = AlertNotifier(
            Dispatcher(
                config.receivers,
                config.routes,
                data_dir=data,
                fsync=sc.fsync,
                clock=clock,
                repair=repair,
            ),
            self.alert_feed,
            self.alerts,
            self.log,
            clock=clock,
        )
        """Alert events to the receivers (notifiers/), caught up after a restart."""
        self.engine = DetectionEngine(config.detection)
        self.ingestor = Ingestor(
            self.shards,
            self.seen,
            self.log,
            sc.limits,
            detector=self.engine if config.detection.enabled else None,
            sink=FanoutSink(self.anomalies, self.alerts),
            clock=clock,
            defer_detection=True,
        )
        self._detection_wake = asyncio.Event()
        self.ingestor.on_pending = self._detection_wake.set
        self.ingestor.on_urgent = self._judge_now
        self.auth = Authenticator(config.tokens)
        self.service = PipelineMonitorService(
            self.ingestor,
            self.shards,
            self.log,
            sc,
            anomalies=self.anomalies,
            alerts=self.alerts,
            auth=self.auth,
        )
        self.producers = DatasetProducers(
            data / "lineage", max_per_team=config.openlineage.max_datasets_per_team
        )
        self.producers.on_disk_error = self._log_failed
        self.registry = node_registry(self.shards, config.metrics)
        """What this node's /metrics shows; parts with state to show register on it."""
        self.registry.register(
            AlertCollector(lambda: ((a.team, a.severity) for a in self.alerts.book.open_alerts()))
        )
        self._add_queue_gauges()
        self.health = health_aio.HealthServicer()
        self.grpc_port = 0
        self.http: HttpServer | None = None
        self.ready = False
        self.failure: PipewardenError | None = None
        """Why the node stops on its own (its log failed, a task died): the exit status is 1."""
        self.stop_requested = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_lock = asyncio.Lock()
        self._periodic: asyncio.Future[Path | None] | None = None
        self._log_bytes_at_snapshot = 0
        self._snapshot_time = time.monotonic()
        self._closed = False
        self._lock_fd = -1
        self._prefetch: Prefetch | None = None
        self._cpu_mark = (time.perf_counter(), time.process_time())
        self._cpu_share = 0.0

    async def start(self) -> None:
        """Listen (NOT_SERVING), recover, then serve."""
        sc = self.config.server
        data = Path(sc.data_dir)
        # Every long-lived task started from here on (ours, the log's, the feed's, the
        # notifiers') that dies stops the node instead of vanishing.
        tasks.supervise(self._task_died)
        # Before anything reads or repairs the data directory: a second server on it would cut
        # what it takes for a torn tail of the log while the first is still writing it.
        self._lock_fd = lockfile.hold(data, ": one server to a data directory")
        if self.prefetch and isinstance(self.log, WriteAheadLog):
            # Forked first, before gRPC starts threads.
            self._prefetch = Prefetch.start(data / "wal", data / "snapshots", sc.limits)
        self.descriptors = self._descriptor_budget()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", sc.limits.max_request_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.max_allowed_incoming_connections", self.descriptors.grpc_connections),
                ("grpc.server_handshake_timeout_ms", int(sc.handshake_timeout_seconds * 1000)),
                ("grpc.max_connection_idle_ms", int(sc.connection_idle_seconds * 1000)),
                # Without BDP probing a stream's receive window stays small (64 KiB), so the
                # requests a client has sent and we have not read are few: a stream waiting for
                # its turn (server/api/admission.py) holds little memory.
                ("grpc.http2.bdp_probe", 0),
            ]
        )
        server.add_generic_rpc_handlers((self.service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        parse_hostport(sc.listen, "server.listen")
        try:
            if sc.tls is not None:
                self.grpc_port = server.add_secure_port(sc.listen, tls.grpc_credentials(sc.tls))
            else:
                self.grpc_port = server.add_insecure_port(sc.listen)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {sc.listen} for gRPC: {e}") from e
        self._server = server
        await asyncio.to_thread(self.producers.load)
        if sc.http_listen:
            # aiohttp's server is imported only for a node with an HTTP port (it takes a tenth
            # of a second of every start).
            from pipewarden.server.api.http import HttpServer
            from pipewarden.server.openlineage.endpoint import LineageEndpoint, event_limits

            host, port = parse_hostport(sc.http_listen, "server.http_listen")
            lineage = LineageEndpoint(
                self.ingestor,
                self.log,
                Translator(
                    self.config.openlineage,
                    self.shards,
                    self.producers,
                    max_upstreams=sc.limits.max_upstreams,
                    max_id_length=sc.limits.max_id_length,
                ),
                self.producers,
                ready=lambda: self.ready,
                max_body_bytes=sc.limits.max_request_bytes,
                limits=event_limits(sc.limits, self.config.openlineage),
            )
            self.http = HttpServer(
                host,
                port,
                lambda: self.ready,
                registry=self.registry,
                routes=(lineage.add_to,),
                max_body_bytes=sc.limits.max_request_bytes,
                auth=self.auth,
                ssl_context=tls.http_context(sc.tls) if sc.tls is not None else None,
                max_connections=self.descriptors.http_connections,
                idle_timeout=sc.handshake_timeout_seconds,
                body_timeout=sc.http_body_timeout_seconds,
                body_buffer_bytes=sc.http_body_buffer_bytes,
            )
            await self.http.start()
        # Recovery makes millions of objects that live as long as the process, with hardly a
        # cycle among them: the collector stays off while it runs (it would scan them over and
        # over), and what it built is frozen before the collector comes back.
        collecting = gc.isenabled()
        gc.disable()
        try:
            await self._recover()
        finally:
            gc.freeze()
            if collecting:
                gc.enable()
        # Pages pending from before a restart go out before anything new happens.
        await self.notifier.start()
        # And what the notifiers' start made, which lives as long.
        gc.freeze()
        # Requests are served only once recovery is complete.
        await server.start()
        self.ready = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(tasks.spawn(self._report_stats(), name="stats"))
        self._tasks.append(tasks.spawn(self._settle_ids(), name="settle-ids"))
        self._tasks.append(tasks.spawn(self._snapshot_loop(), name="snapshots"))
        self.alert_feed.start()
        self._tasks.append(tasks.spawn(self._alert_loop(), name="alert-timers"))
        if self.config.detection.enabled:
            self._tasks.append(tasks.spawn(self._detection_loop(), name="detection"))

    def _descriptor_budget(self) -> descriptors.Budget:
        """Raise the open-file limit, hold the spare descriptors, and cap connections to what
        is left beyond the reserve for our files (see server/storage/descriptors.py)."""
        sc = self.config.server
        limit = descriptors.raise_limit()
        descriptors.SPARES.hold()
        budget = descriptors.plan(
            limit,
            descriptors.in_use(),
            sc.reserved_descriptors,
            sc.max_grpc_connections,
            sc.max_http_connections,
            http=bool(sc.http_listen),
        )
        log.info(
            "open-file limit %d: %d kept for files, connections capped at %d (gRPC) and %d (HTTP)",
            budget.limit,
            budget.reserved,
            budget.grpc_connections,
            budget.http_connections,
        )
        return budget

    def _add_queue_gauges(self) -> None:
        wal = self.log if isinstance(self.log, WriteAheadLog) else None
        queue_gauges(
            self.registry,
            {
                "pipewarden_log_unsynced_entries": (
                    "Log entries appended but not yet durable (requests waiting on the log).",
                    lambda: wal.last_seq - wal.durable_seq if wal else 0,
                ),
                "pipewarden_log_bytes": ("Bytes in the write-ahead log.", self.log.size_bytes),
                "pipewarden_detection_pending_pipelines": (
                    "Pipelines touched by ingestion and waiting for detection.",
                    lambda: len(self.ingestor.pending),
                ),
                "pipewarden_openlineage_datasets": (
                    "Datasets whose producing pipelines are known from OpenLineage outputs.",
                    lambda: len(self.producers),
                ),
                "pipewarden_ready": (
                    "1 once recovery is done and the node serves, else 0.",
                    lambda: 1 if self.ready else 0,
                ),
            },
        )

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

    async def _snapshot_loop(self) -> None:
        sc = self.config.server
        while True:
            await asyncio.sleep(SNAPSHOT_CHECK_SECONDS)
            descriptors.SPARES.hold()  # again, if an open had to give one up
            grown = self.log.size_bytes() - self._log_bytes_at_snapshot
            due = sc.snapshot_interval_seconds > 0 and (
                time.monotonic() - self._snapshot_time >= sc.snapshot_interval_seconds
            )
            changed = self.shards.changed >= SNAPSHOT_CHANGED_PIPELINES
            if grown >= sc.snapshot_log_bytes or (due and grown > 0) or changed:
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

    async def _detection_loop(self) -> None:
        """Evaluate what ingestion touched as soon as it is left pending, and the pipelines
        whose staleness or stuck-run deadline has passed; first, every recovered pipeline once.
        Under load a pass takes a while (see _evaluate_in_slices), and a pipeline's many runs
        meanwhile are judged once, in the next."""
        try:
            await self._evaluate_in_slices(list(self.shards.pipelines()))
            while True:
                if not self._detection_wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(DETECTION_INTERVAL_SECONDS):
                            await self._detection_wake.wait()
                self._detection_wake.clear()
                due = [self.shards.get(pid) for pid in self.engine.due(self.clock())]
                pipelines = self.ingestor.take_pending() + [p for p in due if p is not None]
                if pipelines:
                    await self._evaluate_in_slices(pipelines)
                await asyncio.sleep(DETECTION_COALESCE_SECONDS)
        except LogError as e:
            log.error("detection stopped: the log failed: %s", e)

    async def _alert_loop(self) -> None:
        """Alert timers: escalation, repeats, holds, silences starting and ending; and root
        causes judged again."""
        try:
            while True:
                await asyncio.sleep(ALERT_TICK_SECONDS)
                self.alerts.tick()
        except LogError as e:
            log.error("alert timers stopped: the log failed: %s", e)

    def _judge_now(self, pipelines: list[PipelineState]) -> None:
        """Judge, in the ingest request that made them, the failure streaks that just reached
        their alerting length, and announce their alerts: a page does not wait for a detection
        pass, which under load takes a while. Pipelines failing together in one request are
        judged side by side, so that a root cause explains the failures downstream of it."""
        self.ingestor.evaluate(pipelines)
        self.alerts.flush(self.clock())

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

    def _log_failed(self, error: LogError) -> None:
        if self.failure is None:  # the first failure is the cause; what follows, its effects
            self.failure = error
        self.stop_requested.set()

    def _task_died(self, name: str, error: BaseException) -> None:
        """A long-lived task died (its traceback is logged): stop, with exit status 1. No
        snapshot is written at the stop, since the state may be half changed; the log holds
        everything acknowledged, and the next start replays it."""
        if self.failure is None:
            self.failure = TaskDied(f"task {name} died of {type(error).__name__}: {error}")
        self.stop_requested.set()

    async def close(self) -> None:
        """Stop in reverse order of start. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.ready = False
        if self._prefetch is not None:  # a start that failed before recovery
            self._prefetch.close()
            self._prefetch = None
        for task in self._tasks:
            await tasks.stop(task)
        await self.health.enter_graceful_shutdown()
        # Watch streams never end by themselves: end them, so only ingest streams drain.
        self.alert_feed.close_subscriptions()
        if self._server is not None:
            await self._server.stop(self.config.server.shutdown_grace_seconds)
        await self.alert_feed.close()
        try:
            await self.notifier.close(self.config.server.shutdown_grace_seconds)
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
            if self.http is not None:
                await self.http.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1


async def serve(config: Config, *, repair: bool = False, insecure: bool = False) -> int:
    """Run a node until SIGTERM or SIGINT; return the exit status."""
    refusal = check_exposure(config, insecure)
    if refusal is not None:
        log.error("cannot start: %s", refusal)
        return 1
    app = App(config, repair=repair, prefetch=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stop_requested.set)
    try:
        await app.start()
    except (OSError, LogError) as e:  # a corrupt log, the outbox used by another process
        log.error("cannot start: %s", e)
        await app.close()
        return 1
    http = f", HTTP on {config.server.http_listen}" if app.http else ""
    log.info(
        "serving gRPC on %s%s, data in %s; hot path %s",
        config.server.listen,
        http,
        os.path.abspath(config.server.data_dir),  # noqa: ASYNC240 - once, at start
        compiled.status(),
    )
    await app.stop_requested.wait()
    if app.failure is not None:
        log.error("stopping: %s", app.failure)
    else:
        log.info("stopping: draining streams, writing a snapshot, flushing the log")
    await app.close()
    log.info("stopped")
    _STOPPED.append(app)
    return 1 if app.failure is not None else 0


_STOPPED: list[App] = []
"""The stopped App, kept to the end: `run` exits without freeing its state, which at a million
pipelines takes seconds that a stop need not spend (everything is on disk by then)."""


def run(config: Config, *, repair: bool = False, insecure: bool = False) -> int:
    """Blocking entry point for `pipewarden serve`."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The state is many long-lived objects and ingestion makes many short-lived ones that
    # reference counting frees; cycles are rare. The default thresholds would run the cyclic
    # collector every 700 allocations and rescan the whole state often: measured, that costs
    # a tenth of ingest throughput.
    gc.set_threshold(50_000, 20, 100)
    status = asyncio.run(serve(config, repair=repair, insecure=insecure))
    if _STOPPED:  # stopped cleanly or not, the log is closed: exit without freeing the state
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)
    return status
