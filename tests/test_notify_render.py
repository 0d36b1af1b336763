"""What each adapter sends (checked against the peers' own validation), and Retry-After."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from pipewarden.notifiers.config import parse_receivers
from pipewarden.notifiers.console import line
from pipewarden.notifiers.email import build_message
from pipewarden.notifiers.http import parse_retry_after
from pipewarden.notifiers.notification import Notification, number, summary
from pipewarden.notifiers.pagerduty import dedup_key, event_body
from pipewarden.notifiers.slack import message
from pipewarden.notifiers.webhook import body, signature
from pipewarden.v1 import alert_pb2
from tests.support.alert_events import T0, event
from tests.support.peers import ROUTING_KEY, pagerduty_answer, slack_answer

LINKS = [{"text": "Runbook", "href": "https://wiki.invalid/run/{pipeline_id}?team={team}"}]
PD, SLACK, MAIL, HOOK = parse_receivers(
    [
        {
            "name": "oncall",
            "type": "pagerduty",
            "routing_key": ROUTING_KEY,
            "links": LINKS,
            "client_url": "https://pw.invalid",
        },
        {"name": "chat", "type": "slack", "webhook_url": "https://hooks.invalid/x", "links": LINKS},
        {
            "name": "mail",
            "type": "email",
            "smtp_host": "h",
            "from": "pw@example.invalid",
            "to": ["a@example.invalid"],
            "links": LINKS,
        },
        {"name": "hook", "type": "webhook", "url": "https://hook.invalid", "links": LINKS},
    ]
)


def note(e: alert_pb2.AlertEvent, receiver: str = "r") -> Notification:
    return Notification("n-1", receiver, e, T0 + 5)


@pytest.mark.parametrize(
    ("severity", "expected"), [("critical", "critical"), ("high", "error"), ("medium", "warning")]
)
def test_pagerduty_severity_mapping(severity: str, expected: str) -> None:
    assert event_body(PD, note(event(severity=severity)))["payload"]["severity"] == expected


def test_pagerduty_trigger_carries_everything_and_is_valid() -> None:
    e = event(
        "a-7",
        "critical",
        pipeline_id="sales/orders eu",
        team="sales",
        caused_by="raw.orders",
        impacted_pipelines=["x"],
        impacted_teams=["t"],
    )
    b = event_body(PD, note(e))
    assert pagerduty_answer(b).status == 202
    p = b["payload"]
    assert b["dedup_key"] == "pipewarden-a-7" and b["event_action"] == "trigger"
    assert p["summary"].startswith("[CRITICAL] sales/orders eu (team sales)")
    assert (p["source"], p["component"], p["group"]) == ("pipewarden", "sales/orders eu", "sales")
    assert p["class"] == "consecutive failures"
    assert p["timestamp"] == "2026-05-28T20:26:40.000Z"
    details = p["custom_details"]
    assert details["observed"] == 5.0 and details["expected"] == 0.0
    assert details["caused_by"] == "raw.orders" and details["occurrences"] == 3
    assert b["links"] == [
        {"href": "https://wiki.invalid/run/sales%2Forders%20eu?team=sales", "text": "Runbook"}
    ]
    assert b["client_url"] == "https://pw.invalid"


def test_pagerduty_summary_is_cut_to_1024_characters() -> None:
    b = event_body(PD, note(event(message="m" * 5000)))
    assert len(b["payload"]["summary"]) == 1024 and b["payload"]["summary"].endswith("…")
    assert pagerduty_answer(b).status == 202


@pytest.mark.parametrize(
    ("kind", "action"), [("acknowledged", "acknowledge"), ("resolved", "resolve")]
)
def test_pagerduty_acknowledge_and_resolve_name_only_the_dedup_key(kind: str, action: str) -> None:
    b = event_body(PD, note(event("a-7", type=kind)))
    assert b == {"routing_key": ROUTING_KEY, "event_action": action, "dedup_key": "pipewarden-a-7"}


def test_dedup_key_is_stable_and_short_enough() -> None:
    assert dedup_key(event("x").alert) == dedup_key(event("x", "medium").alert)
    long = dedup_key(event("z" * 400).alert)
    assert len(long) <= 255 and long == dedup_key(event("z" * 400).alert)


def test_slack_message_has_a_fallback_and_valid_blocks() -> None:
    e = event(severity="high", message="<script> & friends " + "x" * 4000)
    m = message(SLACK, note(e))
    assert slack_answer(m).status == 200
    assert "payments.settlement_daily" in m["text"] and "team payments" in m["text"]
    header, text, fields, context = m["blocks"]
    assert header["text"]["text"].endswith("payments.settlement_daily (team payments)")
    assert text["text"]["text"].startswith("&lt;script&gt; &amp; friends")
    assert len(text["text"]["text"]) <= 3000 and len(fields["fields"]) <= 10
    assert (
        "<https://wiki.invalid/run/payments.settlement_daily?team=payments|Runbook>"
        in (context["elements"][0]["text"])
    )


def test_webhook_body_is_versioned_and_signed() -> None:
    e = event("a-9", "medium", "acknowledged", acknowledged_by="alice")
    b = body(HOOK, note(e, "hook"))
    assert b["version"] == 1 and b["event"] == "acknowledged" and b["receiver"] == "hook"
    a = b["alert"]
    assert (a["pipeline_id"], a["team"], a["severity"], a["state"]) == (
        "payments.settlement_daily",
        "payments",
        "medium",
        "acknowledged",
    )
    assert a["kind"] == "consecutive_failures" and a["acknowledged_by"] == "alice"
    assert a["caused_by"] is None and a["resolved_at"] is None
    assert "payments.settlement_daily (team payments)" in b["summary"]
    json.dumps(b)  # serializable as it is
    payload = b'{"a":1}'
    expected = hmac.new(b"key", payload, hashlib.sha256).hexdigest()
    assert signature("key", payload) == f"sha256={expected}"


def test_email_has_subject_text_html_and_stable_ids() -> None:
    msg = build_message(MAIL, note(event(severity="medium", message="<b>bold</b>")))
    assert msg["Subject"].startswith(
        "[Pipewarden] [MEDIUM] payments.settlement_daily (team payments)"
    )
    assert msg["Message-ID"] == "<n-1.pipewarden@example.invalid>"
    assert msg["References"] == build_message(MAIL, note(event(type="resolved")))["References"]
    text, html = msg.iter_parts()
    assert (
        "Observed" in text.get_content() and "Runbook: https://wiki.invalid/" in text.get_content()
    )
    assert "&lt;b&gt;bold&lt;/b&gt;" in html.get_content()


def test_console_line_names_pipeline_and_team() -> None:
    assert "notify r: [RESOLVED] payments.settlement_daily (team payments)" in line(
        note(event(type="resolved"))
    )


@pytest.mark.parametrize(
    ("kind", "tag"),
    [("fired", "[HIGH]"), ("escalated", "[HIGH, escalated]"), ("resolved", "[RESOLVED]")],
)
def test_summary_tags(kind: str, tag: str) -> None:
    assert summary(event(severity="high", type=kind)).startswith(tag)


@pytest.mark.parametrize(
    ("value", "text"),
    [(5.0, "5"), (0.8123, "0.8123"), (1234567.0, "1,234,567"), (12.3456, "12.35")],
)
def test_numbers_for_people(value: float, text: str) -> None:
    assert number(value) == text


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = format_datetime(datetime.fromtimestamp(T0 + 30, UTC), usegmt=True)
    assert parse_retry_after(when, now=T0) == pytest.approx(30.0)


def test_an_untrusted_likely_cause_is_in_every_notifications_text() -> None:
    """An alert that another team's lineage would explain still pages, and says so."""
    e = event("a-8", "critical", caused_by="", untrusted_cause="nsa/fake")
    n = note(e)
    assert event_body(PD, n)["payload"]["custom_details"]["untrusted_cause"] == "nsa/fake"
    assert body(HOOK, n)["alert"]["untrusted_cause"] == "nsa/fake"
    assert "nsa/fake" in json.dumps(message(SLACK, n))
    for part in build_message(MAIL, n).iter_parts():
        text = part.get_content()
        assert "Likely caused by (untrusted lineage)" in text and "nsa/fake" in text
