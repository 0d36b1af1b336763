"""PagerDuty Events API v2: an alert's events become trigger, acknowledge and resolve.

Every event of one alert carries the same `dedup_key` (`pipewarden-<alert_id>`), so PagerDuty
folds repeats and retries into one incident, and acknowledge and resolve reach it. A trigger
carries the full payload: `summary` (at most 1,024 characters, naming the pipeline and the
team), `source`, `severity` (CRITICAL → critical, HIGH → error, MEDIUM → warning),
`timestamp`, `component` (the pipeline), `group` (the team), `class` (the kind) and
`custom_details` with the numbers; plus the configured links. PagerDuty answers 202 when it has
taken the event; 400 means the event is invalid and is not retried; 429 and 5xx are.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipewarden.notifiers.config import PagerDutyReceiver
from pipewarden.notifiers.http import HttpClient
from pipewarden.notifiers.notification import (
    ACKNOWLEDGED,
    RESOLVED,
    Notification,
    event_name,
    iso_time,
    kind_name,
    links,
    severity_name,
    state_name,
    summary,
    unix_iso,
)
from pipewarden.v1 import alert_pb2

__all__ = ["PagerDutyNotifier", "dedup_key", "event_action", "event_body"]

SEVERITY = {3: "critical", 2: "error", 1: "warning"}
"""Pipewarden severity number → PagerDuty severity."""
MAX_DEDUP_KEY = 255


def dedup_key(alert: alert_pb2.Alert) -> str:
    """The alert's stable dedup_key: `pipewarden-<alert_id>`, hashed if that would be too long."""
    key = f"pipewarden-{alert.alert_id or alert.fingerprint}"
    if len(key) <= MAX_DEDUP_KEY:
        return key
    return "pipewarden-" + hashlib.sha256(key.encode()).hexdigest()


def event_action(event_type: int) -> str:
    """trigger (fired, escalated, repeated), acknowledge or resolve."""
    if event_type == ACKNOWLEDGED:
        return "acknowledge"
    if event_type == RESOLVED:
        return "resolve"
    return "trigger"


def event_body(receiver: PagerDutyReceiver, n: Notification) -> dict[str, Any]:
    """The Events API v2 request body for one notification."""
    a = n.alert
    action = event_action(n.event.type)
    body: dict[str, Any] = {
        "routing_key": receiver.routing_key,
        "event_action": action,
        "dedup_key": dedup_key(a),
    }
    if action != "trigger":
        return body
    when = iso_time(n.event.time) or iso_time(a.last_seen) or unix_iso(n.created)
    details: dict[str, Any] = {
        "pipeline_id": a.pipeline_id,
        "team": a.team,
        "kind": kind_name(a.kind),
        "severity": severity_name(a.severity),
        "state": state_name(a.state),
        "event": event_name(n.event.type),
        "message": a.message,
        "observed": a.observed,
        "expected": a.expected,
        "occurrences": a.occurrences,
        "first_seen": iso_time(a.first_seen),
        "last_seen": iso_time(a.last_seen),
        "alert_id": a.alert_id,
        "fingerprint": a.fingerprint,
    }
    if a.caused_by:
        details["caused_by"] = a.caused_by
    if a.untrusted_cause:
        details["untrusted_cause"] = a.untrusted_cause
    if a.impacted_pipelines:
        details["impacted_pipelines"] = list(a.impacted_pipelines)
        details["impacted_teams"] = list(a.impacted_teams)
    body["payload"] = {
        "summary": summary(n.event, 1024),
        "source": receiver.source,
        "severity": SEVERITY.get(a.severity, "warning"),
        "timestamp": when,
        "component": a.pipeline_id,
        "group": a.team,
        "class": kind_name(a.kind),
        "custom_details": details,
    }
    body["client"] = "Pipewarden"
    if receiver.client_url:
        body["client_url"] = receiver.client_url
    found = links(receiver.links, a)
    if found:
        body["links"] = [{"href": href, "text": text} for text, href in found]
    return body


class PagerDutyNotifier:
    """Sends notifications to one PagerDuty routing key."""

    def __init__(self, receiver: PagerDutyReceiver, http: HttpClient) -> None:
        self.receiver = receiver
        self.http = http

    async def send(self, n: Notification) -> None:
        """POST the event; return once PagerDuty has accepted it (202)."""
        body = json.dumps(event_body(self.receiver, n), separators=(",", ":")).encode()
        await self.http.post(
            self.receiver.url,
            body,
            time_limit=self.receiver.delivery.timeout_seconds,
            what=f"pagerduty receiver {self.receiver.name}",
        )
