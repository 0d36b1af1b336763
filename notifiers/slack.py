"""Slack incoming webhook: one Block Kit message per notification, with a plain `text` fallback.

The fallback (shown in notifications and by clients without blocks) is the one-line summary,
naming the pipeline and the team. The blocks: a header, the alert's message, up to ten fields
(pipeline, team, severity, kind, state, the numbers, times), and a context line with the links
and the alert id. Slack answers 200 `ok`; 429 comes with Retry-After; 400/403/404/410 (invalid
payload, forbidden, no such webhook, archived channel) are final.
"""

from __future__ import annotations

import json
from typing import Any

from pipewarden.notifiers.config import SlackReceiver
from pipewarden.notifiers.http import HttpClient
from pipewarden.notifiers.notification import (
    ACKNOWLEDGED,
    ESCALATED,
    RESOLVED,
    Notification,
    facts,
    links,
    severity_name,
    summary,
    truncate,
)

__all__ = ["SlackNotifier", "escape", "message"]

HEADER_LIMIT = 150
TEXT_LIMIT = 3000
FIELD_LIMIT = 2000
MAX_FIELDS = 10
_EMOJI = {3: ":rotating_light:", 2: ":warning:", 1: ":large_yellow_circle:"}


def escape(text: str) -> str:
    """Text safe for Slack mrkdwn: &, < and > escaped, as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _headline(n: Notification) -> str:
    a = n.alert
    severity = severity_name(a.severity).upper()
    if n.event.type == RESOLVED:
        head = ":white_check_mark: Resolved"
    elif n.event.type == ACKNOWLEDGED:
        head = ":eyes: Acknowledged" + (f" by {a.acknowledged_by}" if a.acknowledged_by else "")
    elif n.event.type == ESCALATED:
        head = f"{_EMOJI.get(a.severity, '')} Escalated to {severity}"
    else:
        head = f"{_EMOJI.get(a.severity, '')} {severity}"
    return truncate(f"{head.strip()}: {a.pipeline_id} (team {a.team})", HEADER_LIMIT)


def message(receiver: SlackReceiver, n: Notification) -> dict[str, Any]:
    """The webhook's JSON body for one notification."""
    a = n.alert
    rows = [(k, v) for k, v in facts(n.event) if k != "Alert"][:MAX_FIELDS]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _headline(n), "emoji": True}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": truncate(escape(a.message or "(no message)"), TEXT_LIMIT),
            },
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": truncate(f"*{label}*\n{escape(value)}", FIELD_LIMIT)}
                for label, value in rows
            ],
        },
    ]
    context = [f"<{href}|{escape(text)}>" for text, href in links(receiver.links, a)]
    context.append(f"alert `{escape(a.alert_id)}`" if a.alert_id else "Pipewarden")
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": truncate(" · ".join(context), TEXT_LIMIT)}],
        }
    )
    return {"text": summary(n.event, TEXT_LIMIT), "blocks": blocks}


class SlackNotifier:
    """Posts to one incoming webhook."""

    def __init__(self, receiver: SlackReceiver, http: HttpClient) -> None:
        self.receiver = receiver
        self.http = http

    async def send(self, n: Notification) -> None:
        """POST the message; return once Slack has accepted it."""
        body = json.dumps(message(self.receiver, n), ensure_ascii=False).encode()
        await self.http.post(
            self.receiver.webhook_url,
            body,
            time_limit=self.receiver.delivery.timeout_seconds,
            what=f"slack receiver {self.receiver.name}",
        )
