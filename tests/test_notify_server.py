"""The server's notifiers end to end, in process: alerts made by ingesting runs over gRPC reach a
local PagerDuty peer (fire, acknowledge, resolve), muted ones do not, a restart sends nothing
twice, a notifiers' feed that overflows catches up without losing or repeating a page, and the
notifiers' metrics are on /metrics."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from pipewarden.notifiers import metrics
from pipewarden.notifiers.config import parse_receivers, parse_routes
from pipewarden.server.app import App
from pipewarden.server.config import Config
from pipewarden.v1 import alert_pb2, service_pb2, service_pb2_grpc
from tests.support.alerting import (
    Clock,
    Stub,
    alerts,
    config,
    eventually,
    failures,
    send,
    successes,
)
from tests.support.helpers import T0, until
from tests.support.peers import PD_PATH, ROUTING_KEY, HttpPeer

NOW = T0 + 100 * 3600


@pytest.fixture
async def peer() -> AsyncIterator[HttpPeer]:
    """A local PagerDuty."""
    p = HttpPeer()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def paging(tmp_path: Path, peer: HttpPeer, **alert_settings: Any) -> Config:
    """Failures in a row only; every CRITICAL alert pages the peer, without rate limit."""
    receivers = parse_receivers(
        [{"name": "oncall", "type": "pagerduty", "url": peer.url(PD_PATH),
          "routing_key": ROUTING_KEY, "rate_per_second": 0, "retry_initial_seconds": 0.02,
          "retry_max_seconds": 0.1}]
    )  # fmt: skip
    routes = parse_routes([{"critical": ["oncall"]}], ["oncall"])
    return dataclasses.replace(
        config(tmp_path, **alert_settings), receivers=receivers, routes=routes
    )


@contextlib.asynccontextmanager
async def serving(cfg: Config, clock: Clock, **notifier: Any) -> AsyncIterator[tuple[App, Stub]]:
    """A started server (its AlertNotifier's attributes set from `notifier` before the start),
    and a stub to it."""
    app = App(cfg, clock=clock)
    for name, value in notifier.items():
        setattr(app.partition.notifier, name, value)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            yield app, service_pb2_grpc.PipelineMonitorStub(channel)
    finally:
        await app.close()


def actions(peer: HttpPeer) -> list[tuple[str, str]]:
    """(event_action, dedup_key) of every request the pager received."""
    return [(r.body["event_action"], r.body["dedup_key"]) for r in peer.received(PD_PATH)]


async def test_fire_acknowledge_resolve_reach_the_pager_once_each_and_metrics_show(
    tmp_path: Path, peer: HttpPeer
) -> None:
    async with serving(paging(tmp_path, peer), Clock(NOW)) as (app, stub):
        await send(stub, *failures("p1", 5))  # five in a row: CRITICAL
        (page,) = await peer.wait_for(PD_PATH, 1)
        (alert,) = await alerts(stub)
        key = f"pipewarden-{alert.alert_id}"
        assert page.body["dedup_key"] == key and page.body["event_action"] == "trigger"
        payload = page.body["payload"]
        assert payload["severity"] == "critical" and payload["component"] == "p1"
        assert "p1" in payload["summary"] and "team team-a" in payload["summary"]

        await stub.AcknowledgeAlert(
            service_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id, by="ana")
        )
        await peer.wait_for(PD_PATH, 2)
        await send(stub, *successes("p1", 1, start=5))  # the next success resolves it
        await peer.wait_for(PD_PATH, 3)
        assert await app.partition.notifier.dispatcher.drain(5)

        assert app.http is not None
        url = f"http://127.0.0.1:{app.http.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as r:
            text = await r.text()
    assert actions(peer) == [("trigger", key), ("acknowledge", key), ("resolve", key)]
    assert 'pipewarden_notifications_sent_total{receiver="oncall"}' in text
    assert "pipewarden_notification_outbox_pending 0.0" in text
    assert 'pipewarden_notification_catch_ups_total{reason="start"}' in text
    assert "pipewarden_notification_delivery_seconds_bucket" in text


async def test_a_muted_alert_is_not_paged_until_its_silence_ends(
    tmp_path: Path, peer: HttpPeer
) -> None:
    clock = Clock(NOW)
    async with serving(paging(tmp_path, peer), clock) as (app, stub):
        silence = await stub.CreateSilence(
            service_pb2.CreateSilenceRequest(
                silence=alert_pb2.Silence(
                    pipeline_id="p1", created_by="ana", ends_at=Timestamp(seconds=int(NOW) + 3600)
                )
            )
        )
        suppressed = metrics.SUPPRESSED._value.get()
        await send(stub, *failures("p1", 5), *failures("p2", 5))
        # p2 pages; p1 fired muted, and the notifiers were told not to send it.
        (page,) = await peer.wait_for(PD_PATH, 1)
        assert page.body["payload"]["component"] == "p2"
        await eventually(lambda: alerts(stub), lambda x: len(x) == 2)
        await until(lambda: metrics.SUPPRESSED._value.get() > suppressed)
        assert await app.partition.notifier.dispatcher.drain(5)
        assert len(peer.received(PD_PATH)) == 1

        # The silence ends while p1 still fails: it fires again, told this time.
        await stub.DeleteSilence(
            service_pb2.DeleteSilenceRequest(silence_id=silence.silence_id, by="ana")
        )
        second = (await peer.wait_for(PD_PATH, 2))[1]
        assert second.body["payload"]["component"] == "p1"
        assert await app.partition.notifier.dispatcher.drain(5)
    assert len(peer.received(PD_PATH)) == 2


async def test_a_restart_sends_nothing_twice_and_still_resolves_what_was_told(
    tmp_path: Path, peer: HttpPeer
) -> None:
    clock = Clock(NOW)
    cfg = paging(tmp_path, peer)
    async with serving(cfg, clock) as (app, stub):
        await send(stub, *failures("p1", 5))
        await peer.wait_for(PD_PATH, 1)
        (alert,) = await alerts(stub)
    key = f"pipewarden-{alert.alert_id}"
    caught_up = metrics.CAUGHT_UP.labels("start")._value.get()
    async with serving(cfg, clock) as (app, stub):
        # Recovered firing and told: the start's catch-up finds nothing missing.
        assert metrics.CAUGHT_UP.labels("start")._value.get() == caught_up
        assert app.partition.notifier.dispatcher.unsettled == 0
        await send(stub, *successes("p1", 1, start=5))
        await peer.wait_for(PD_PATH, 2)
        assert await app.partition.notifier.dispatcher.drain(5)
    assert actions(peer) == [("trigger", key), ("resolve", key)]


async def test_a_feed_that_overflows_catches_up_every_page_once_in_order(
    tmp_path: Path, peer: HttpPeer
) -> None:
    pipelines = [f"p{i}" for i in range(8)]
    overflows = metrics.CATCH_UPS.labels("overflow")._value.get()
    # One detection pass fires eight alerts: more than a queue of one can hold.
    async with serving(paging(tmp_path, peer), Clock(NOW), queue_size=1) as (app, stub):
        await send(stub, *(r for p in pipelines for r in failures(p, 5)))
        await peer.wait_for(PD_PATH, len(pipelines))
        assert metrics.CATCH_UPS.labels("overflow")._value.get() >= overflows + 1
        # Their resolutions, in one pass too: caught up again, after the triggers.
        await send(stub, *(r for p in pipelines for r in successes(p, 1, start=5)))
        await peer.wait_for(PD_PATH, 2 * len(pipelines))
        assert await app.partition.notifier.dispatcher.drain(5)
        told = {a.pipeline_id: f"pipewarden-{a.alert_id}" for a in await alerts(stub)}
    assert sorted(told) == pipelines
    for key in told.values():
        assert [action for action, k in actions(peer) if k == key] == ["trigger", "resolve"]
    assert len(peer.received(PD_PATH)) == 2 * len(pipelines)
