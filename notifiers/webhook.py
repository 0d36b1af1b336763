"""A generic webhook: a documented, versioned JSON body that other tools can consume.

POST <url>, `Content-Type: application/json`, with `Idempotency-Key: <notification_id>` (the same
on every retry of one notification, so a receiver can drop repeats) and, when the receiver has a
`secret`, `X-Pipewarden-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`.
Any 2xx is accepted. The body, version 1 (fields are only ever added within a version):

    {
      "version": 1,
      "notification_id": "4f1c…",           # unique per notification, stable across retries
      "receiver": "hook",                   # the receiver's name in the configuration
      "event": "fired",                     # fired | escalated | acknowledged | resolved
      "event_time": "2026-05-28T10:00:00.000Z",
      "summary": "[CRITICAL] sales.orders (team sales) consecutive failures: …",
      "alert": {
        "alert_id": "…", "fingerprint": "…", "pipeline_id": "sales.orders", "team": "sales",
        "kind": "consecutive_failures",     # the AnomalyKind without its prefix, lower case
        "severity": "critical",             # critical | high | medium
        "state": "firing",                  # firing | acknowledged | resolved
        "message": "…", "observed": 5.0, "expected": 0.0, "occurrences": 3,
        "first_seen": "…Z", "last_seen": "…Z", "silenced": false,
        "caused_by": null,                  # the upstream root-cause pipeline, when there is one
        "untrusted_cause": null,            # a likely cause the team does not trust (it notifies)
        "impacted_pipelines": [], "impacted_teams": [],
        "acknowledged_by": null, "acknowledged_at": null, "resolved_at": null
      },
      "links": [{"text": "Runbook", "href": "https://…"}]
    }

Times are RFC 3339 in UTC; absent values are null.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from pipewarden.notifiers.config import WebhookReceiver
from pipewarden.notifiers.http import HttpClient
from pipewarden.notifiers.notification import (
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

__all__ = ["VERSION", "WebhookNotifier", "body", "signature"]

VERSION = 1
"""The body's version; a change that is not an addition gets a new one."""


def body(receiver: WebhookReceiver, n: Notification) -> dict[str, Any]:
    """The JSON body of version 1 for one notification."""
    a = n.alert

    def time_or_none(ts: Any) -> str | None:
        return iso_time(ts) or None

    return {
        "version": VERSION,
        "notification_id": n.notification_id,
        "receiver": receiver.name,
        "event": event_name(n.event.type),
        "event_time": iso_time(n.event.time) or unix_iso(n.created),
        "summary": summary(n.event),
        "alert": {
            "alert_id": a.alert_id,
            "fingerprint": a.fingerprint,
            "pipeline_id": a.pipeline_id,
            "team": a.team,
            "kind": kind_name(a.kind).replace(" ", "_"),
            "severity": severity_name(a.severity),
            "state": state_name(a.state),
            "message": a.message,
            "observed": a.observed,
            "expected": a.expected,
            "occurrences": a.occurrences,
            "first_seen": time_or_none(a.first_seen),
            "last_seen": time_or_none(a.last_seen),
            "silenced": a.silenced,
            "caused_by": a.caused_by or None,
            "untrusted_cause": a.untrusted_cause or None,
            "impacted_pipelines": list(a.impacted_pipelines),
            "impacted_teams": list(a.impacted_teams),
            "acknowledged_by": a.acknowledged_by or None,
            "acknowledged_at": time_or_none(a.acknowledged_at),
            "resolved_at": time_or_none(a.resolved_at),
        },
        "links": [{"text": text, "href": href} for text, href in links(receiver.links, a)],
    }


def signature(secret: str, payload: bytes) -> str:
    """The X-Pipewarden-Signature value: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


class WebhookNotifier:
    """Posts to one URL."""

    def __init__(self, receiver: WebhookReceiver, http: HttpClient) -> None:
        self.receiver = receiver
        self.http = http

    async def send(self, n: Notification) -> None:
        """POST the body; return once the endpoint answered 2xx."""
        payload = json.dumps(body(self.receiver, n), ensure_ascii=False).encode()
        headers = {
            "Idempotency-Key": n.notification_id,
            "X-Pipewarden-Event": event_name(n.event.type),
        }
        if self.receiver.secret:
            headers["X-Pipewarden-Signature"] = signature(self.receiver.secret, payload)
        await self.http.post(
            self.receiver.url,
            payload,
            time_limit=self.receiver.delivery.timeout_seconds,
            headers=headers,
            what=f"webhook receiver {self.receiver.name}",
        )
