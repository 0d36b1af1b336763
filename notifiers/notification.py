"""A notification: one alert event for one receiver, and the words every adapter shares.

Everything here is pure: the adapters turn a `Notification` into their request with these
helpers, so PagerDuty, Slack, email, webhooks and the console say the same thing the same way.
Every text names the pipeline id and the team, so that whoever reads only the subject line or
the page's summary knows what broke and whose it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from google.protobuf.timestamp_pb2 import Timestamp

from pipewarden import names
from pipewarden.notifiers.config import Link
from pipewarden.v1 import alert_pb2

__all__ = [
    "Notification",
    "event_name",
    "facts",
    "iso_time",
    "kind_name",
    "links",
    "number",
    "severity_name",
    "state_name",
    "state_of",
    "summary",
    "truncate",
    "unix_iso",
]

FIRED = alert_pb2.ALERT_EVENT_TYPE_FIRED
ESCALATED = alert_pb2.ALERT_EVENT_TYPE_ESCALATED
ACKNOWLEDGED = alert_pb2.ALERT_EVENT_TYPE_ACKNOWLEDGED
RESOLVED = alert_pb2.ALERT_EVENT_TYPE_RESOLVED


@dataclass(frozen=True, slots=True)
class Notification:
    """One alert event on its way to one receiver."""

    notification_id: str
    """Unique per notification; webhooks get it as an idempotency key, email as Message-ID."""
    receiver: str
    """The receiver's name."""
    event: alert_pb2.AlertEvent
    """What happened to which alert. Not to be modified."""
    created: float
    """When it was submitted, Unix seconds."""
    seq: int = 0
    """Its entry in the outbox's log; 0 when it is not in the outbox."""

    def __repr__(self) -> str:
        a = self.event.alert
        return (
            f"Notification({self.notification_id}, receiver={self.receiver}, "
            f"{event_name(self.event.type)} {severity_name(a.severity)} alert={a.alert_id}, "
            f"seq={self.seq})"
        )

    @property
    def alert(self) -> alert_pb2.Alert:
        """The alert, as it was after the event."""
        return self.event.alert


def severity_name(severity: int) -> str:
    """critical, high, medium (unspecified for 0)."""
    return names.severity_name(severity)


def kind_name(kind: int) -> str:
    """The anomaly kind in words: `consecutive failures`."""
    return names.kind_name(kind).replace("_", " ")


def event_name(event_type: int) -> str:
    """fired, escalated, acknowledged, resolved."""
    return _enum_name(alert_pb2.AlertEventType, event_type, "ALERT_EVENT_TYPE_")


def state_name(state: int) -> str:
    """firing, acknowledged, resolved."""
    return _enum_name(alert_pb2.AlertState, state, "ALERT_STATE_")


def state_of(event: alert_pb2.AlertEvent) -> int:
    """The AlertState an event leaves its alert in: the alert's own, else what the event
    implies (acknowledged, resolved, otherwise firing)."""
    if event.alert.state:
        return event.alert.state
    if event.type == ACKNOWLEDGED:
        return alert_pb2.ALERT_STATE_ACKNOWLEDGED
    if event.type == RESOLVED:
        return alert_pb2.ALERT_STATE_RESOLVED
    return alert_pb2.ALERT_STATE_FIRING


def _enum_name(enum: object, number: int, prefix: str) -> str:
    try:
        name: str = enum.Name(number)  # type: ignore[attr-defined]
    except ValueError:
        return str(number)
    return name.removeprefix(prefix).lower()


def _tag(event: alert_pb2.AlertEvent) -> str:
    severity = severity_name(event.alert.severity).upper()
    if event.type == ESCALATED:
        return f"{severity}, escalated"
    if event.type == ACKNOWLEDGED:
        by = event.alert.acknowledged_by
        return f"ACKNOWLEDGED by {by}" if by else "ACKNOWLEDGED"
    if event.type == RESOLVED:
        return "RESOLVED"
    return severity


def summary(event: alert_pb2.AlertEvent, limit: int = 1024) -> str:
    """One line that says it all: `[CRITICAL] sales.orders (team sales) consecutive failures:
    5 failures in a row`, cut to `limit` characters."""
    a = event.alert
    text = f"[{_tag(event)}] {a.pipeline_id} (team {a.team}) {kind_name(a.kind)}"
    if a.message:
        text += f": {a.message}"
    return truncate(" ".join(text.split()), limit)


def truncate(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, ending in an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def iso_time(ts: Timestamp) -> str:
    """An RFC 3339 UTC time, `2026-05-28T10:00:00.000Z`; empty when the timestamp is unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    return unix_iso(ts.seconds + ts.nanos / 1e9)


def unix_iso(seconds: float) -> str:
    """Unix seconds as an RFC 3339 UTC time with milliseconds."""
    when = datetime.fromtimestamp(seconds, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def number(value: float) -> str:
    """A measurement for people: at most four significant digits, no exponent below 10^15."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.4g}" if abs(value) >= 1e-3 else f"{value:.3g}"


def facts(event: alert_pb2.AlertEvent) -> list[tuple[str, str]]:
    """The alert's particulars as (label, value) pairs, the empty ones left out."""
    a = event.alert
    rows = [
        ("Pipeline", a.pipeline_id),
        ("Team", a.team),
        # Early, so that chat's first fields keep it: it is why this alert pages at all.
        ("Likely caused by (untrusted lineage)", a.untrusted_cause),
        ("Severity", severity_name(a.severity)),
        ("Kind", kind_name(a.kind)),
        ("State", state_name(a.state)),
        ("Observed", number(a.observed)),
        ("Expected", number(a.expected)),
        ("Occurrences", f"{a.occurrences:,}" if a.occurrences else ""),
        ("First seen", iso_time(a.first_seen)),
        ("Last seen", iso_time(a.last_seen)),
        ("Caused by", a.caused_by),
        ("Impacted pipelines", ", ".join(a.impacted_pipelines)),
        ("Impacted teams", ", ".join(a.impacted_teams)),
        ("Acknowledged by", a.acknowledged_by),
        ("Resolved at", iso_time(a.resolved_at)),
        ("Alert", a.alert_id),
    ]
    return [(label, value) for label, value in rows if value]


def links(templates: Sequence[Link], alert: alert_pb2.Alert) -> list[tuple[str, str]]:
    """The configured links as (text, URL) for this alert, placeholders filled and URL-quoted."""
    values = {
        "pipeline_id": quote(alert.pipeline_id, safe=""),
        "team": quote(alert.team, safe=""),
        "alert_id": quote(alert.alert_id, safe=""),
        "kind": quote(kind_name(alert.kind).replace(" ", "_"), safe=""),
    }
    return [(link.text, link.href.format(**values)) for link in templates]
