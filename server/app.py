"""Wiring: builds every part from the configuration, starts them in order, stops them in reverse.

Start: recover state from the event log, listen for gRPC and HTTP, then report SERVING. Stop
(SIGTERM or SIGINT): report NOT_SERVING, let open streams finish within the grace period, make
the log durable, stop HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.config import Config, parse_hostport
from server.dedup import SeenExecutions
from server.eventlog import EventLog, MemoryLog
from server.http import HttpServer
from server.ingest import Ingestor
from server.servicer import SERVICE_NAME, PipelineMonitorService
from server.shards import ShardSet

__all__ = ["App", "serve"]

log = logging.getLogger("pipewarden")

STATS_INTERVAL_SECONDS = 10.0


class App:
    """One Pipewarden node."""

    def __init__(self, config: Config, *, event_log: EventLog | None = None) -> None:
        self.config = config
        sc = config.server
        self.shards = ShardSet(sc.shards, sc.window)
        self.seen = SeenExecutions(sc.max_seen_executions)
        self.log: EventLog = event_log if event_log is not None else MemoryLog()
        self.ingestor = Ingestor(self.shards, self.seen, self.log, sc.limits)
        self.service = PipelineMonitorService(self.ingestor, self.shards, self.log, sc)
        self.health = health_aio.HealthServicer()
        self.grpc_port = 0
        self.http: HttpServer | None = None
        self.ready = False
        self._server: grpc.aio.Server | None = None
        self._stats: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Recover, then serve."""
        sc = self.config.server
        await asyncio.to_thread(Path(sc.data_dir).mkdir, parents=True, exist_ok=True)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", sc.limits.max_request_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((self.service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server,
        )
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        parse_hostport(sc.listen, "server.listen")
        try:
            self.grpc_port = server.add_insecure_port(sc.listen)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {sc.listen} for gRPC: {e}") from e
        self._server = server
        await server.start()
        if sc.http_listen:
            host, port = parse_hostport(sc.http_listen, "server.http_listen")
            self.http = HttpServer(host, port, lambda: self.ready)
            await self.http.start()
        await self._recover()
        self.ready = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._stats = asyncio.create_task(self._report_stats())

    async def _recover(self) -> None:
        began = time.perf_counter()
        await self.log.open()
        records = events = 0
        for _, payload in self.log.replay(0):
            events += self.ingestor.replay(payload)
            records += 1
        if records:
            log.info(
                "recovered %d events from %d log records in %.2fs: %d pipelines",
                events,
                records,
                time.perf_counter() - began,
                len(self.shards),
            )

    async def _report_stats(self) -> None:
        from server import metrics

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

    async def close(self) -> None:
        """Stop in reverse order of start. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._stats is not None:
            self._stats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.config.server.shutdown_grace_seconds)
        await self.log.close()
        if self.http is not None:
            await self.http.close()


async def serve(config: Config) -> int:
    """Run a node until SIGTERM or SIGINT; return the exit status."""
    app = App(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
    except OSError as e:
        log.error("%s", e)
        await app.close()
        return 1
    http = f", HTTP on {config.server.http_listen}" if app.http else ""
    log.info(
        "serving gRPC on %s%s, data in %s",
        config.server.listen,
        http,
        os.path.abspath(config.server.data_dir),  # noqa: ASYNC240 - once, at start
    )
    await stop.wait()
    log.info("stopping: draining streams and flushing the log")
    await app.close()
    log.info("stopped")
    return 0


def run(config: Config) -> int:
    """Blocking entry point for `pipewarden serve`."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(serve(config))
