"""What the alerting tests share: a server with a clock the test moves, detectors chosen per
test, and a watcher that collects alert events."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from pipewarden.server.alerting.settings import AlertSettings
from pipewarden.server.app import App
from pipewarden.server.config import Config
from pipewarden.server.detection.engine import DETECTORS
from pipewarden.server.detection.settings import DetectionSettings
from pipewarden.v1 import alert_pb2, service_pb2, service_pb2_grpc
from tests.support.config import make_config
from tests.support.helpers import T0, request, run

Stub = service_pb2_grpc.PipelineMonitorStub
FIRED = alert_pb2.ALERT_EVENT_TYPE_FIRED
ESCALATED = alert_pb2.ALERT_EVENT_TYPE_ESCALATED
ACKNOWLEDGED = alert_pb2.ALERT_EVENT_TYPE_ACKNOWLEDGED
RESOLVED = alert_pb2.ALERT_EVENT_TYPE_RESOLVED
REPEATED = alert_pb2.ALERT_EVENT_TYPE_REPEATED
STREAK = 4  # ANOMALY_KIND_CONSECUTIVE_FAILURES
STALE = 7
MEDIUM, HIGH, CRITICAL = 1, 2, 3


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


def detection(*enabled: str) -> DetectionSettings:
    """Detection settings with only the named detectors on."""
    settings = DetectionSettings()
    changes = {
        name: dataclasses.replace(getattr(settings, name), enabled=name in enabled)
        for name in DETECTORS
    }
    return dataclasses.replace(settings, **changes)


def config(tmp_path: Path, *detectors: str, **alerts: Any) -> Config:
    """A test server's configuration: the given detectors (default: failures in a row), and
    alert settings replaced by keyword."""
    base = make_config(tmp_path)
    return dataclasses.replace(
        base,
        detection=detection(*(detectors or ("consecutive_failures",))),
        alerts=dataclasses.replace(AlertSettings(), **alerts),
    )


@contextlib.asynccontextmanager
async def serving(cfg: Config, clock: Clock) -> AsyncIterator[tuple[App, Stub]]:
    """A started server with `clock`, and a stub to it."""
    app = App(cfg, clock=clock)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            yield app, service_pb2_grpc.PipelineMonitorStub(channel)
    finally:
        await app.close()


def failures(pipeline: str, n: int, *, start: int = 0, team: str = "team-a", **kw: Any) -> list:
    """`n` failed runs of `pipeline`, an hour apart from T0 + start hours."""
    return [
        run(
            f"{pipeline}-f{start + i}",
            pipeline,
            team,
            "failed",
            start=T0 + (start + i) * 3600,
            **kw,
        )
        for i in range(n)
    ]


def successes(pipeline: str, n: int, *, start: int = 0, team: str = "team-a", **kw: Any) -> list:
    """`n` successful runs of `pipeline`, an hour apart from T0 + start hours."""
    return [
        run(f"{pipeline}-s{start + i}", pipeline, team, start=T0 + (start + i) * 3600, **kw)
        for i in range(n)
    ]


async def send(stub: Stub, *executions: Any) -> None:
    """Ingest and check that every execution was accepted."""
    response = await stub.Ingest(request(*executions))
    assert not response.rejected, response.rejected


class Watcher:
    """A WatchAlerts stream read in the background."""

    def __init__(
        self,
        stub: Stub,
        team: str = "",
        min_severity: int = 0,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.call = stub.WatchAlerts(
            service_pb2.WatchAlertsRequest(team=team, min_severity=min_severity),  # type: ignore[arg-type]
            metadata=metadata,
        )
        self.events: list[alert_pb2.AlertEvent] = []
        self.error: grpc.aio.AioRpcError | None = None
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.call:
                self.events.append(event)
                self._arrived.set()
        except grpc.aio.AioRpcError as e:
            self.error = e
            self._arrived.set()

    async def ready(self) -> None:
        """Wait until the server has the subscription (its metadata arrived)."""
        await self.call.initial_metadata()

    async def ended(self, within: float = 5.0) -> None:
        """Wait until the stream has ended (normally, or with `error`)."""
        await asyncio.wait_for(asyncio.shield(self._task), within)

    async def wait_for(
        self, predicate: Callable[[list[alert_pb2.AlertEvent]], bool], within: float = 5.0
    ) -> list[alert_pb2.AlertEvent]:
        """Wait until the events so far satisfy `predicate`; return them."""
        async with asyncio.timeout(within):
            while not predicate(self.events):
                if self.error is not None:
                    raise AssertionError(f"the stream ended: {self.error}")
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.events)

    async def wait_count(self, n: int, within: float = 5.0) -> list[alert_pb2.AlertEvent]:
        """Wait for at least `n` events."""
        return await self.wait_for(lambda events: len(events) >= n, within)

    def types(self) -> list[tuple[str, int]]:
        """(pipeline, event type) of each event so far."""
        return [(e.alert.pipeline_id, e.type) for e in self.events]

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def alerts(stub: Stub, **filters: Any) -> list[alert_pb2.Alert]:
    """ListAlerts."""
    return list((await stub.ListAlerts(service_pb2.ListAlertsRequest(**filters))).alerts)


async def eventually(
    probe: Callable[[], Any], predicate: Callable[[Any], bool], within: float = 5.0
) -> Any:
    """Await `probe()` until `predicate` holds for its result; return the result."""
    async with asyncio.timeout(within):
        while True:
            value = await probe()
            if predicate(value):
                return value
            await asyncio.sleep(0.01)
