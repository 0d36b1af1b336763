"""Wiring: builds every part from the configuration, starts them in order, stops them in reverse.

The node runs one Partition over the whole fleet (server/partition/engine.py), which owns the
state, its log, its loops and its notifications; App adds the gRPC and HTTP servers, the lock
on the data directory, health, metrics and signals.

Start: restore the newest snapshot, replay the log after it, start the notifiers (what their
outbox held is sent again, and what the alerts' state says receivers missed is sent), listen for
gRPC and HTTP, then report SERVING (gRPC health and /readyz say NOT_SERVING until recovery is
done). Stop (SIGTERM or SIGINT): report NOT_SERVING, end the WatchAlerts streams, let other open
streams finish within the grace period, let the notifiers catch up and drain within the grace
period, write a snapshot, make the log durable, stop HTTP. A log that cannot write stops the
partition, and so the server, with exit status 1, and so does a disk that is full (or failing)
under any of its files: one error line "disk full: <path>: …" says which; what was acknowledged
stays in the log.
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

from pipewarden.server.api import tls
from pipewarden.server.api.auth import Authenticator
from pipewarden.server.api.collector import AlertCollector, node_registry, queue_gauges
from pipewarden.server.api.servicer import SERVICE_NAME, PipelineMonitorService
from pipewarden.server.base import tasks
from pipewarden.server.base.confparse import parse_hostport
from pipewarden.server.base.errors import LogError, PipewardenError, TaskDied
from pipewarden.server.config import Config, check_exposure
from pipewarden.server.core import compiled
from pipewarden.server.openlineage.mapping import Translator
from pipewarden.server.openlineage.producers import DatasetProducers
from pipewarden.server.partition.engine import Partition, PartitionSettings
from pipewarden.server.partition.fleet import StandaloneFleet
from pipewarden.server.storage import descriptors, lockfile
from pipewarden.server.storage.eventlog import EventLog

if TYPE_CHECKING:
    from pipewarden.server.api.http import HttpServer

__all__ = ["App", "partition_settings", "run", "serve"]

log = logging.getLogger("pipewarden")


def partition_settings(config: Config) -> PartitionSettings:
    """What the partition reads of `config`."""
    sc = config.server
    return PartitionSettings(
        data_dir=Path(sc.data_dir),
        shards=sc.shards,
        window=sc.window,
        max_seen_executions=sc.max_seen_executions,
        dedup_retention_seconds=sc.dedup_retention_seconds,
        fsync=sc.fsync,
        fsync_interval_seconds=sc.fsync_interval_seconds,
        wal_segment_bytes=sc.wal_segment_bytes,
        snapshot_interval_seconds=sc.snapshot_interval_seconds,
        snapshot_log_bytes=sc.snapshot_log_bytes,
        limits=sc.limits,
        detection=config.detection,
        alerts=config.alerts,
        receivers=config.receivers,
        routes=config.routes,
    )


class App:
    """One Pipewarden node: one partition, its servers, and what stops them."""

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
        sc = config.server
        data = Path(sc.data_dir)
        self.partition = Partition(
            partition_settings(config), event_log=event_log, repair=repair, clock=clock
        )
        """The fleet's state: standalone, one partition holds all of it."""
        self.fleet = StandaloneFleet(self.partition)
        """What needs the whole fleet (server/partition/fleet.py)."""
        self.auth = Authenticator(config.tokens)
        self.service = PipelineMonitorService(self.partition, self.fleet, sc, auth=self.auth)
        self.producers = DatasetProducers(
            data / "lineage", max_per_team=config.openlineage.max_datasets_per_team
        )
        self.producers.on_disk_error = self._fail
        self.registry = node_registry(self.partition.shards, config.metrics)
        """What this node's /metrics shows; parts with state to show register on it."""
        alerts = self.partition.alerts
        self.registry.register(
            AlertCollector(lambda: ((a.team, a.severity) for a in alerts.book.open_alerts()))
        )
        queue_gauges(
            self.registry,
            {
                **self.partition.gauges(),
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
        self.health = health_aio.HealthServicer()
        self.grpc_port = 0
        self.http: HttpServer | None = None
        self.ready = False
        self.stop_requested = asyncio.Event()
        """Set by SIGTERM and SIGINT, and by what stops the node on its own (see `failure`)."""
        self._failure: PipewardenError | None = None
        self._server: grpc.aio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closed = False
        self._lock_fd = -1

    @property
    def failure(self) -> PipewardenError | None:
        """Why the node stops on its own (its partition failed, a task died): the exit status
        is 1. None for a stop that was asked for."""
        return self._failure or self.partition.failure

    async def start(self) -> None:
        """Listen (NOT_SERVING), recover, then serve."""
        sc = self.config.server
        data = Path(sc.data_dir)
        # Every long-lived task started from here on (ours, the partition's, the log's, the
        # feed's, the notifiers') that dies stops the node instead of vanishing.
        tasks.supervise(self._task_died)
        # Before anything reads or repairs the data directory: a second server on it would cut
        # what it takes for a torn tail of the log while the first is still writing it.
        self._lock_fd = lockfile.hold(data, ": one server to a data directory")
        if self.prefetch:
            self.partition.fork_prefetch()  # forked first, before gRPC starts threads
        self._watch = asyncio.ensure_future(self._watch_partition())
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
            await self._start_http()
        # Recovery makes millions of objects that live as long as the process, with hardly a
        # cycle among them: the collector stays off while it runs (it would scan them over and
        # over), and what it built, and what the notifiers' start made, is frozen before the
        # collector comes back.
        collecting = gc.isenabled()
        gc.disable()
        try:
            await self.partition.start()
        finally:
            gc.freeze()
            if collecting:
                gc.enable()
        # Requests are served only once recovery is complete.
        await server.start()
        self.ready = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def _start_http(self) -> None:
        # aiohttp's server is imported only for a node with an HTTP port (it takes a tenth
        # of a second of every start).
        from pipewarden.server.api.http import HttpServer
        from pipewarden.server.openlineage.endpoint import LineageEndpoint, event_limits

        sc = self.config.server
        host, port = parse_hostport(sc.http_listen, "server.http_listen")
        lineage = LineageEndpoint(
            self.partition,
            Translator(
                self.config.openlineage,
                self.partition.shards,
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

    async def snapshot(self) -> Path | None:
        """Write the partition's snapshot now (see Partition.snapshot)."""
        return await self.partition.snapshot()

    async def _watch_partition(self) -> None:
        """A partition that stops on its own (its log failed) stops the node: standalone, the
        node is its one partition."""
        await self.partition.failed.wait()
        self.stop_requested.set()

    def _fail(self, error: LogError) -> None:
        """A file of the node's own (the OpenLineage producers) cannot be written: stop."""
        if self._failure is None:
            self._failure = error
        self.stop_requested.set()

    def _task_died(self, name: str, error: BaseException) -> None:
        """A long-lived task died (its traceback is logged): stop, with exit status 1. No
        snapshot is written at the stop, since the state may be half changed; the log holds
        everything acknowledged, and the next start replays it."""
        if self._failure is None:
            self._failure = TaskDied(f"task {name} died of {type(error).__name__}: {error}")
        self.partition.fail(self._failure)  # and so no snapshot at its close
        self.stop_requested.set()

    async def close(self) -> None:
        """Stop in reverse order of start. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.ready = False
        grace = self.config.server.shutdown_grace_seconds
        await self.partition.stop()
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        try:
            await self.partition.close(grace)
        finally:
            if self._watch is not None:
                self._watch.cancel()
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
