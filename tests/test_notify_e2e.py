"""Notifications through a real `pipewarden serve` process and real local peers (PagerDuty, Slack,
a webhook, SMTP), from the runs a client ingests over gRPC:

- the issue's "done when": a CRITICAL alert pages, a HIGH one reaches chat and a MEDIUM one
  email, each exactly once; its acknowledgement and resolution reach the pager; a restart sends
  nothing again;
- kill -9 with a page pending while the pager is down: the restarted server delivers that page;
- kill -9 after the alert is durable but before the notifiers took its event in: the restarted
  server's catch-up delivers the page.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from pipewarden.client import execution
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.helpers import until
from tests.support.peers import HOOK_PATH, PD_PATH, ROUTING_KEY, SLACK_PATH, HttpPeer, SmtpPeer
from tests.support.process import ServerProcess

MINUTE, HOUR = 60.0, 3600.0
FAST = {"rate_per_second": 0, "retry_initial_seconds": 0.05, "retry_max_seconds": 0.2}
ONLY_STREAKS_AND_STALENESS: dict[str, Any] = {
    name: {"enabled": False}
    for name in ("peer", "success_rate", "duration_regression", "volume_drop", "stuck_run")
}
# Old runs sent now are judged stale once nothing more has arrived for a second.
ONLY_STREAKS_AND_STALENESS["staleness"] = {"settle_seconds": 1}


@pytest.fixture(autouse=True)
def _quiet_aiosmtpd() -> None:
    logging.getLogger("mail.log").setLevel(logging.ERROR)


@pytest.fixture
async def peer() -> AsyncIterator[HttpPeer]:
    p = HttpPeer()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def pagerduty(peer: HttpPeer) -> dict[str, Any]:
    return {"name": "oncall", "type": "pagerduty", "url": peer.url(PD_PATH),
            "routing_key": ROUTING_KEY, "max_attempts": 1000, **FAST}  # fmt: skip


def write_config(tmp_path: Path, receivers: list[dict[str, Any]], routes: list[Any]) -> str:
    path = tmp_path / "pipewarden.yaml"
    doc = {"detection": ONLY_STREAKS_AND_STALENESS, "receivers": receivers, "routes": routes}
    path.write_text(yaml.safe_dump(doc))
    return str(path)


async def started(data: Path, config: str, **env: str) -> ServerProcess:
    server = ServerProcess(data, "--config", config, env=env)
    # In a thread: the peers answer in this event loop meanwhile.
    await asyncio.to_thread(server.wait_serving)
    return server


async def stopped(server: ServerProcess) -> str:
    """SIGTERM (the notifiers drain their queues first); the server's output."""
    assert await asyncio.to_thread(server.stop, signal.SIGTERM) == 0, server.log()
    out = server.log()
    assert "Traceback" not in out, out
    return out


def runs(pipeline: str, team: str, status: str, times: list[float]) -> list[Any]:
    return [
        execution(
            f"{pipeline}-{status}-{i}",
            pipeline,
            team,
            status,
            started_at=t - 30,
            finished_at=t,
            records=100,
        )
        for i, t in enumerate(times)
    ]


async def ingest(server: ServerProcess, *executions: Any) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)
        response = await stub.Ingest(service_pb2.IngestRequest(executions=executions), timeout=10)
        assert not response.rejected, response.rejected


async def list_alerts(server: ServerProcess) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)
        found = await stub.ListAlerts(service_pb2.ListAlertsRequest(), timeout=10)
    return {a.pipeline_id: a for a in found.alerts}


async def test_critical_pages_high_chats_medium_mails_each_once_ack_and_resolve_page(
    tmp_path: Path, peer: HttpPeer
) -> None:
    smtp = SmtpPeer()
    await smtp.start()
    receivers = [
        pagerduty(peer),
        {"name": "chat", "type": "slack", "webhook_url": peer.url(SLACK_PATH), **FAST},
        {"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp.port,
         "from": "pipewarden@example.invalid", "to": ["oncall@example.invalid"], **FAST},
        {"name": "hook", "type": "webhook", "url": peer.url(HOOK_PATH), **FAST},
    ]  # fmt: skip
    routes = [{"critical": ["oncall", "hook"], "high": ["chat"], "medium": ["mail"]}]
    config = write_config(tmp_path, receivers, routes)
    data = tmp_path / "data"
    now = time.time()
    server = await started(data, config)
    try:
        await ingest(
            server,
            # Five failures in a row, ten minutes apart: CRITICAL.
            *runs("sales.orders", "sales", "failed", [now - k * 10 * MINUTE for k in range(5)]),
            # Three: HIGH.
            *runs("sales.refunds", "sales", "failed", [now - k * MINUTE for k in range(3)]),
            # Hourly, and nothing for four and a half hours: stale, MEDIUM.
            *runs("ops.backup", "ops", "succeeded", [now - (4.5 + k) * HOUR for k in range(10)]),
        )
        (page,) = await peer.wait_for(PD_PATH, 1)
        (chat,) = await peer.wait_for(SLACK_PATH, 1)
        (mail,) = await smtp.wait_for(1)
        await peer.wait_for(HOOK_PATH, 1)
        alerts = await list_alerts(server)
        assert sorted(alerts) == ["ops.backup", "sales.orders", "sales.refunds"]
        critical = alerts["sales.orders"].alert_id
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            await stub.AcknowledgeAlert(
                service_pb2.AcknowledgeAlertRequest(alert_id=critical, by="ana"), timeout=10
            )
        await peer.wait_for(PD_PATH, 2)
        await ingest(server, *runs("sales.orders", "sales", "succeeded", [now + 1]))
        await peer.wait_for(PD_PATH, 3)
        await peer.wait_for(HOOK_PATH, 3)
        await stopped(server)
        # A restart: recovered, caught up, and nothing is sent again.
        server = await started(data, config)
        await stopped(server)
    finally:
        server.kill()
        await smtp.stop()

    key = f"pipewarden-{critical}"
    pd = [(r.body["event_action"], r.body["dedup_key"]) for r in peer.received(PD_PATH)]
    assert pd == [("trigger", key), ("acknowledge", key), ("resolve", key)]
    payload = page.body["payload"]
    assert payload["severity"] == "critical" and payload["group"] == "sales"
    assert "sales.orders" in payload["summary"] and "team sales" in payload["summary"]
    assert peer.received(SLACK_PATH) == [chat]
    assert "sales.refunds" in chat.body["text"] and "[HIGH]" in chat.body["text"]
    assert smtp.mails == [mail]
    subject = str(mail.message["Subject"])
    assert "ops.backup" in subject and "team ops" in subject and "[MEDIUM]" in subject
    hooks = [(r.body["event"], r.body["alert"]["alert_id"]) for r in peer.received(HOOK_PATH)]
    assert hooks == [("fired", critical), ("acknowledged", critical), ("resolved", critical)]


async def test_a_page_pending_while_the_pager_is_down_survives_kill_9(tmp_path: Path) -> None:
    peer = HttpPeer()  # not listening: the pager is down
    config = write_config(tmp_path, [pagerduty(peer)], [{"critical": ["oncall"]}])
    data = tmp_path / "data"
    now = time.time()
    server = await started(data, config)
    try:
        await ingest(server, *runs("p1", "team-a", "failed", [now - k * MINUTE for k in range(5)]))
        # The page is in the outbox (written before the first attempt) and being retried.
        await until(lambda: "will retry" in server.log(), within=10)
        server.kill()
        assert server.proc.returncode == -signal.SIGKILL
        await peer.start()  # the pager is back
        server = await started(data, config)
        (page,) = await peer.wait_for(PD_PATH, 1)
        alert = (await list_alerts(server))["p1"]
        out = await stopped(server)
    finally:
        server.kill()
        await peer.stop()
    assert "1 notification(s) pending from before the restart" in out
    # Exactly that page, once: the attempts before the crash never reached the pager.
    assert peer.received(PD_PATH) == [page]
    assert page.status == 202 and page.body["event_action"] == "trigger"
    assert page.body["dedup_key"] == f"pipewarden-{alert.alert_id}"
    assert page.body["payload"]["severity"] == "critical"


async def test_killed_before_the_notifiers_took_the_alert_in_the_restart_pages(
    tmp_path: Path, peer: HttpPeer
) -> None:
    config = write_config(tmp_path, [pagerduty(peer)], [{"critical": ["oncall"]}])
    data = tmp_path / "data"
    now = time.time()
    server = await started(data, config, PIPEWARDEN_FAILPOINTS="notify-before-submit")
    try:
        # The alert's record is durable; the process dies as its event reaches the notifiers.
        await ingest(server, *runs("p1", "team-a", "failed", [now - k * MINUTE for k in range(5)]))
        assert await asyncio.to_thread(server.proc.wait, 10) == -signal.SIGKILL
        server.kill()
        assert peer.requests == []
        server = await started(data, config)
        (page,) = await peer.wait_for(PD_PATH, 1)
        alert = (await list_alerts(server))["p1"]
        out = await stopped(server)
    finally:
        server.kill()
    assert "notifications caught up at start: 1" in out
    assert peer.received(PD_PATH) == [page]
    assert page.body["dedup_key"] == f"pipewarden-{alert.alert_id}"
    assert page.body["event_action"] == "trigger"
