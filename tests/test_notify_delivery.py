"""Delivery against real local peers: routing, each adapter once, retries on 429/5xx/timeouts/
refused connections, no retry on other 4xx, dead letters, rate limits, dedup, and a slow receiver
that blocks nobody else."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pipewarden.notifiers import deadletters
from pipewarden.notifiers.config import parse_receivers, parse_routes
from pipewarden.notifiers.dispatcher import Dispatcher
from pipewarden.notifiers.notification import Notification
from pipewarden.notifiers.webhook import signature
from pipewarden.server.base.errors import LogError
from tests.support.alert_events import event
from tests.support.peers import (
    HOOK_PATH,
    PD_PATH,
    ROUTING_KEY,
    SLACK_PATH,
    Answer,
    Certificates,
    HttpPeer,
    SmtpPeer,
)

FAST = {"retry_initial_seconds": 0.02, "retry_max_seconds": 0.1, "rate_per_second": 0}
"""Small backoff delays and no rate limit (but where a test sets one), so tests take little time."""


@pytest.fixture
async def peer() -> AsyncIterator[HttpPeer]:
    """PagerDuty, Slack and a webhook on one local port."""
    p = HttpPeer()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def dispatcher(
    tmp_path: Path,
    receivers: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    **kw: Any,
) -> Dispatcher:
    parsed = parse_receivers(receivers)
    return Dispatcher(
        parsed, parse_routes(routes, [r.name for r in parsed]), data_dir=tmp_path / "data", **kw
    )


def pagerduty(peer: HttpPeer, **kw: Any) -> dict[str, Any]:
    return {"name": "oncall", "type": "pagerduty", "url": peer.url(PD_PATH),
            "routing_key": ROUTING_KEY, **FAST, **kw}  # fmt: skip


def slack(peer: HttpPeer, **kw: Any) -> dict[str, Any]:
    return {"name": "chat", "type": "slack", "webhook_url": peer.url(SLACK_PATH), **FAST, **kw}


ALL = [{"critical": ["oncall"]}]
CHAT = [{"high": ["chat"]}]


async def test_each_severity_reaches_its_receiver_exactly_once_and_resolution_pages(
    tmp_path: Path, peer: HttpPeer
) -> None:
    """The issue's "done when": with the four adapters against local peers, CRITICAL pages, HIGH
    reaches chat, MEDIUM email, each once; resolution reaches the pager."""
    certs = Certificates(tmp_path)
    smtp = SmtpPeer(certs, starttls=True, login=("pw", "secret"))
    await smtp.start()
    receivers = [
        pagerduty(peer),
        slack(peer),
        {"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp.port,
         "from": "pipewarden@example.invalid", "to": ["oncall@example.invalid"],
         "username": "pw", "password": "secret", "ca_file": str(certs.ca_file), **FAST},
        {"name": "hook", "type": "webhook", "url": peer.url(HOOK_PATH), "secret": "s3", **FAST},
    ]  # fmt: skip
    routes = [{"critical": ["oncall", "hook"], "high": ["chat"], "medium": ["mail"]}]
    d = dispatcher(tmp_path, receivers, routes)
    await d.start()
    try:
        d.submit(event("crit", "critical", pipeline_id="sales.orders", team="sales"))
        d.submit(event("high", "high", pipeline_id="sales.refunds", team="sales"))
        d.submit(event("med", "medium", pipeline_id="ops.backup", team="ops"))
        assert await d.drain(10)
        # The same events again (the alert manager re-evaluating): nothing more is sent.
        for alert_id, severity in (("crit", "critical"), ("high", "high"), ("med", "medium")):
            assert d.submit(event(alert_id, severity)) == []
        d.submit(event("crit", "critical", "resolved", pipeline_id="sales.orders", team="sales"))
        assert await d.drain(10)
    finally:
        await d.close()
        await smtp.stop()

    (trigger, resolve) = peer.received(PD_PATH)
    assert trigger.status == resolve.status == 202
    assert trigger.body["event_action"] == "trigger"
    assert resolve.body == {
        "routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "pipewarden-crit"
    }  # fmt: skip
    payload = trigger.body["payload"]
    assert trigger.body["dedup_key"] == "pipewarden-crit"
    assert "sales.orders" in payload["summary"] and "team sales" in payload["summary"]
    assert payload["severity"] == "critical" and payload["group"] == "sales"

    (chat,) = peer.received(SLACK_PATH)
    assert chat.status == 200 and "sales.refunds" in chat.body["text"]
    assert "team sales" in chat.body["text"] and chat.body["blocks"]

    (mail,) = smtp.mails
    assert mail.tls and mail.login == "pw" and mail.rcpt_tos == ["oncall@example.invalid"]
    subject = str(mail.message["Subject"])
    assert "ops.backup" in subject and "team ops" in subject and "MEDIUM" in subject
    kinds = [part.get_content_type() for part in mail.message.iter_parts()]
    assert kinds == ["text/plain", "text/html"]

    fired, resolved = peer.received(HOOK_PATH)
    assert [fired.body["event"], resolved.body["event"]] == ["fired", "resolved"]
    assert fired.body["version"] == 1 and fired.body["alert"]["pipeline_id"] == "sales.orders"
    assert fired.headers["Idempotency-Key"] == fired.body["notification_id"]
    raw = json.dumps(fired.body, ensure_ascii=False).encode()
    assert fired.headers["X-Pipewarden-Signature"] == signature("s3", raw)


async def test_429_with_retry_after_then_500_then_accepted(tmp_path: Path, peer: HttpPeer) -> None:
    peer.script(
        PD_PATH,
        Answer(429, '{"status":"throttled"}', {"Retry-After": "1"}),
        Answer(500, "oops"),
        Answer(503, "", delay=0.05),
    )
    d = dispatcher(tmp_path, [pagerduty(peer)], ALL)
    await d.start()
    try:
        d.submit(event())
        (accepted,) = await peer.wait_for(PD_PATH, 1)
    finally:
        await d.close()
    attempts = peer.received(PD_PATH)
    assert [r.status for r in attempts] == [429, 500, 503, 202]
    # Retry-After: 1 was honoured; the 5xx retries then came quickly (small backoff).
    assert attempts[1].at - attempts[0].at >= 0.95
    assert attempts[3].at - attempts[1].at < 1.0
    # Every attempt is the same event.
    assert all(r.body == accepted.body for r in attempts)
    assert not deadletters.read(tmp_path / "data")


async def test_a_rejected_event_is_not_retried_and_becomes_a_dead_letter(
    tmp_path: Path, peer: HttpPeer
) -> None:
    # PagerDuty refuses a routing key that is not 32 characters with 400 and the errors.
    d = dispatcher(tmp_path, [pagerduty(peer, routing_key="too-short")], ALL)
    await d.start()
    try:
        d.submit(event("a-bad"))
        assert await d.drain(5)
    finally:
        await d.close()
    (attempt,) = peer.received(PD_PATH)
    assert attempt.status == 400
    (letter,) = deadletters.read(tmp_path / "data")
    assert letter["receiver"] == "oncall" and letter["alert_id"] == "a-bad"
    assert letter["status"] == 400 and letter["attempts"] == 1
    assert "routing_key" in letter["response"] and "payments.settlement_daily" in letter["summary"]


async def test_after_the_last_attempt_a_dead_letter_and_the_next_submit_tries_again(
    tmp_path: Path, peer: HttpPeer
) -> None:
    peer.script(SLACK_PATH, *(Answer(500, "server_error") for _ in range(3)))
    d = dispatcher(tmp_path, [slack(peer, max_attempts=3)], CHAT)
    await d.start()
    try:
        d.submit(event(severity="high"))
        assert await d.drain(5)
        (letter,) = deadletters.read(tmp_path / "data")
        assert letter["attempts"] == 3 and letter["status"] == 500
        # The receiver was never told, so the same alert is not a duplicate.
        assert len(d.submit(event(severity="high"))) == 1
        await peer.wait_for(SLACK_PATH, 1)
    finally:
        await d.close()
    assert [r.status for r in peer.received(SLACK_PATH)] == [500, 500, 500, 200]


async def test_a_slow_answer_times_out_and_is_tried_again(tmp_path: Path, peer: HttpPeer) -> None:
    peer.script(PD_PATH, Answer(202, "{}", delay=3.0))
    d = dispatcher(tmp_path, [pagerduty(peer, timeout_seconds=0.3)], ALL)
    await d.start()
    began = time.monotonic()
    try:
        d.submit(event())
        await peer.wait_for(PD_PATH, 1)  # the second attempt, answered at once
        waited = time.monotonic() - began
    finally:
        await d.close()
    assert waited < 2.5
    first, second = peer.received(PD_PATH)[:2]
    assert second.at - first.at >= 0.3
    assert first.body["dedup_key"] == second.body["dedup_key"]


async def test_refused_connections_are_retried_until_the_peer_is_back(tmp_path: Path) -> None:
    down = HttpPeer()  # not started: connections to its port are refused
    d = dispatcher(tmp_path, [pagerduty(down, max_attempts=100)], ALL)
    await d.start()
    try:
        d.submit(event())
        await asyncio.sleep(0.3)  # several refused attempts
        await down.start()
        (page,) = await down.wait_for(PD_PATH, 1)
        assert page.body["dedup_key"] == "pipewarden-a1"
        assert await d.drain(5)
    finally:
        await d.close()
        await down.stop()


async def test_a_hanging_receiver_blocks_neither_the_caller_nor_the_others(
    tmp_path: Path, peer: HttpPeer
) -> None:
    peer.script(PD_PATH, *(Answer(202, "{}", delay=30) for _ in range(5)))
    d = dispatcher(
        tmp_path,
        [pagerduty(peer, timeout_seconds=20, rate_per_second=1000, burst=100),
         slack(peer, rate_per_second=1000, burst=100)],
        [{"critical": ["oncall", "chat"]}],
    )  # fmt: skip
    await d.start()
    try:
        began = time.perf_counter()
        for i in range(20):
            d.submit(event(f"a{i}"))
        submitted = time.perf_counter() - began
        await peer.wait_for(SLACK_PATH, 20, within=5)
        assert submitted < 0.1, f"20 submits took {submitted:.3f}s"
        assert len(peer.received(PD_PATH)) == 1  # still waiting on the first
    finally:
        await d.close()
    # Not delivered before the stop: still pending in the outbox, for the next start.
    assert len(d.outbox.pending) == 20


async def test_rate_limit_per_webhook(tmp_path: Path, peer: HttpPeer) -> None:
    d = dispatcher(
        tmp_path,
        [slack(peer, rate_per_second=10, burst=1),
         # A second receiver on the same webhook shares its limit.
         {**slack(peer), "name": "chat2"}],
        [{"high": ["chat", "chat2"]}],
    )  # fmt: skip
    await d.start()
    try:
        for i in range(5):
            d.submit(event(f"a{i}", "high"))
        arrived = await peer.wait_for(SLACK_PATH, 10)
    finally:
        await d.close()
    # 10 messages, one token at once then 10 a second: at least 0.9 s from first to last.
    assert arrived[-1].at - arrived[0].at >= 0.85
    gaps = [b.at - a.at for a, b in itertools.pairwise(arrived)]
    assert min(gaps) >= 0.05  # arrivals jitter a little around the 0.1 s pacing


async def test_dedup_by_severity_state_and_repeat_interval(tmp_path: Path, peer: HttpPeer) -> None:
    now = [1000.0]
    d = dispatcher(
        tmp_path,
        [pagerduty(peer, repeat_interval_seconds=3600, rate_per_second=0), slack(peer)],
        [{"critical": ["oncall"], "high": ["chat"]}],
        clock=lambda: now[0],
    )
    await d.start()
    try:
        assert [n.receiver for n in d.submit(event("x", "high"))] == ["chat"]
        assert d.submit(event("x", "high")) == []  # unchanged: a duplicate
        # Escalated to CRITICAL: a new severity, and now routed to the pager.
        assert [n.receiver for n in d.submit(event("x", "critical", "escalated"))] == ["oncall"]
        now[0] += 1800
        assert d.submit(event("x", "critical")) == []  # within the repeat interval
        now[0] += 1800
        assert [n.receiver for n in d.submit(event("x", "critical"))] == ["oncall"]  # repeat
        # Acknowledged and resolved: told to every receiver that was told it fired.
        acked = d.submit(event("x", "critical", "acknowledged", acknowledged_by="alice"))
        assert sorted(n.receiver for n in acked) == ["chat", "oncall"]
        assert d.submit(event("x", "critical", "acknowledged")) == []
        assert len(d.submit(event("x", "critical", "resolved"))) == 2
        # An alert no receiver heard of resolves silently; notify=False sends nothing.
        assert d.submit(event("never-told", "critical", "resolved")) == []
        assert d.submit(event("muted", "critical"), notify=False) == []
        # A told alert resolved without telling (silenced meanwhile): its memory ages out.
        assert len(d.submit(event("y", "critical"))) == 1
        assert d.submit(event("y", "critical", "resolved"), notify=False) == []
        assert d.nflog.get("y", "oncall").state == 3
        assert await d.drain(10)
    finally:
        await d.close()
    actions = [r.body["event_action"] for r in peer.received(PD_PATH)]
    assert actions == ["trigger", "trigger", "acknowledge", "resolve", "trigger"]
    assert len(peer.received(SLACK_PATH)) == 3  # fired, acknowledged, resolved


async def test_a_full_queue_makes_dead_letters_not_waits(tmp_path: Path, peer: HttpPeer) -> None:
    peer.script(PD_PATH, Answer(202, "{}", delay=30))
    d = dispatcher(tmp_path, [pagerduty(peer, queue_size=2, rate_per_second=0)], ALL)
    await d.start()
    try:
        d.submit(event("q0"))
        await asyncio.sleep(0.1)  # the worker takes it: in flight
        for i in range(1, 5):  # two queued, two over
            d.submit(event(f"q{i}"))
        await asyncio.sleep(0.2)
        letters = deadletters.read(tmp_path / "data")
    finally:
        await d.close()
    assert sorted(x["alert_id"] for x in letters) == ["q3", "q4"]
    assert all("queue full" in x["error"] and x["attempts"] == 0 for x in letters)


async def test_no_configuration_means_the_console(tmp_path: Path) -> None:
    out = io.StringIO()
    d = Dispatcher(data_dir=tmp_path, console=out)
    await d.start()
    try:
        d.submit(event(severity="medium", pipeline_id="sales.orders", team="sales"))
        assert await d.drain(5)
    finally:
        await d.close()
    (line,) = out.getvalue().splitlines()
    assert "notify console: [MEDIUM] sales.orders (team sales)" in line


async def test_pending_notifications_survive_a_restart_and_are_sent_once(tmp_path: Path) -> None:
    down = HttpPeer()
    receivers, routes = [pagerduty(down, max_attempts=1000)], ALL
    first = dispatcher(tmp_path, receivers, routes)
    await first.start()
    first.submit(event("r1"))
    first.submit(event("r2", "critical"))
    await asyncio.sleep(0.1)
    await first.close()
    assert len(first.outbox.pending) == 2

    await down.start()
    try:
        second = dispatcher(tmp_path, receivers, routes)
        await second.start()
        try:
            got = await down.wait_for(PD_PATH, 2)
            assert await second.drain(5)
            # What it remembered: the same alerts are duplicates after the restart.
            assert second.submit(event("r1")) == []
        finally:
            await second.close()
        third = dispatcher(tmp_path, receivers, routes)
        await third.start()
        await asyncio.sleep(0.2)
        await third.close()
    finally:
        await down.stop()
    assert sorted(r.body["dedup_key"] for r in got) == ["pipewarden-r1", "pipewarden-r2"]
    assert len(down.received(PD_PATH)) == 2  # nothing sent again by the third start


async def test_the_outbox_is_compacted_and_keeps_what_is_pending(tmp_path: Path) -> None:
    peer = HttpPeer()
    await peer.start()
    receivers = [pagerduty(peer, rate_per_second=0, queue_size=10_000),
                 slack(peer, rate_per_second=0, max_attempts=10_000)]  # fmt: skip
    routes = [{"critical": ["oncall"], "high": ["chat"]}]
    # Slack is down (503 for ever): its one notification stays pending through compactions.
    peer.script(SLACK_PATH, *(Answer(503, "down") for _ in range(100_000)))
    d = dispatcher(
        tmp_path, receivers, routes, outbox_segment_bytes=8192, outbox_compact_bytes=32768
    )
    await d.start()
    try:
        d.submit(event("stuck", "high", message="x" * 500))
        for i in range(300):
            d.submit(event(f"c{i}", message="y" * 500))
        await peer.wait_for(PD_PATH, 300)
        await asyncio.sleep(1.5)  # a maintenance pass
        size = d.outbox.size_bytes()
    finally:
        await d.close()
        await peer.stop()
    assert size < 60_000, size  # 300 notifications of ~700 bytes were written
    again = dispatcher(tmp_path, receivers, routes)
    found = await again.outbox.open()
    await again.outbox.close()
    assert [n.alert.alert_id for n in found.pending] == ["stuck"]
    assert found.nflog.get("c299", "oncall") is not None


async def test_one_process_at_a_time_uses_an_outbox(tmp_path: Path) -> None:
    first = Dispatcher(data_dir=tmp_path, console=io.StringIO())
    await first.start()
    try:
        with pytest.raises(LogError, match="in use by another process"):
            await Dispatcher(data_dir=tmp_path).start()
    finally:
        await first.close()
    again = Dispatcher(data_dir=tmp_path)
    await again.start()
    await again.close()


class Broken:
    """A notifier with a bug: injected in place of the real adapter, not patched into it."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, n: Notification) -> None:
        self.calls += 1
        raise KeyError("a bug in an adapter")


async def test_a_bug_in_an_adapter_makes_a_dead_letter_and_the_worker_goes_on(
    tmp_path: Path, peer: HttpPeer
) -> None:
    broken = Broken()
    d = dispatcher(tmp_path, [pagerduty(peer)], ALL, notifiers={"oncall": broken})
    await d.start()
    try:
        d.submit(event("b1"))
        d.submit(event("b2"))
        assert await d.drain(5)
    finally:
        await d.close()
    assert broken.calls == 2  # not retried, and the second still had its turn
    letters = deadletters.read(tmp_path / "data")
    assert [x["alert_id"] for x in letters] == ["b1", "b2"]
    assert all("unexpected KeyError" in x["error"] for x in letters)


async def test_a_receiver_removed_from_the_configuration_across_a_restart(
    tmp_path: Path, peer: HttpPeer
) -> None:
    down = HttpPeer()  # chat is unreachable: its notification stays pending
    first = dispatcher(
        tmp_path,
        [pagerduty(peer), {**slack(down), "max_attempts": 1000}],
        [{"critical": ["oncall", "chat"]}],
    )
    await first.start()
    first.submit(event("gone"))
    await peer.wait_for(PD_PATH, 1)
    await first.close()
    # Restarted without the chat receiver: its pending notification becomes a dead letter, and
    # the resolution goes to the pager alone.
    second = dispatcher(tmp_path, [pagerduty(peer)], [{"critical": ["oncall"]}])
    await second.start()
    try:
        assert [n.receiver for n in second.submit(event("gone", type="resolved"))] == ["oncall"]
        assert await second.drain(5)
    finally:
        await second.close()
    (letter,) = deadletters.read(tmp_path / "data")
    assert letter["receiver"] == "chat" and "no longer configured" in letter["error"]
    assert [r.body["event_action"] for r in peer.received(PD_PATH)] == ["trigger", "resolve"]


async def test_slack_429_holds_back_every_receiver_on_that_webhook(
    tmp_path: Path, peer: HttpPeer
) -> None:
    peer.script(SLACK_PATH, Answer(429, "rate_limited", {"Retry-After": "1"}))
    d = dispatcher(
        tmp_path,
        [slack(peer), {**slack(peer), "name": "chat2"}],  # one webhook, two receivers
        [{"high": ["chat"], "medium": ["chat2"]}],
    )
    await d.start()
    try:
        d.submit(event("s1", "high"))
        async with asyncio.timeout(5):
            await peer.arrived.wait()  # the 429 was answered
        d.submit(event("s2", "medium"))  # to the other receiver on the same webhook
        arrived = await peer.wait_for(SLACK_PATH, 2)
    finally:
        await d.close()
    attempts = peer.received(SLACK_PATH)
    assert [r.status for r in attempts] == [429, 200, 200]
    # Nothing went to the webhook for the second that Slack asked for, from either receiver.
    assert min(r.at for r in arrived) - attempts[0].at >= 0.95


async def test_slack_archived_channel_is_final(tmp_path: Path, peer: HttpPeer) -> None:
    peer.script(SLACK_PATH, Answer(410, "channel_is_archived"))
    d = dispatcher(tmp_path, [slack(peer)], CHAT)
    await d.start()
    try:
        d.submit(event("s2", "high"))
        assert await d.drain(5)
    finally:
        await d.close()
    (letter,) = deadletters.read(tmp_path / "data")
    assert letter["status"] == 410 and letter["response"] == "channel_is_archived"
    assert len(peer.received(SLACK_PATH)) == 1
