"""The notification log: what each receiver was last told about each alert. Pure.

It decides notification dedup: an alert is sent to a receiver again only when its severity or
state changed since that receiver was last told, or when the receiver's repeat interval has
passed. It also says who to tell when an alert is acknowledged or resolved: the receivers that
were told it fired, whatever the routes say now (an alert that escalated from email to the pager
resolves on both). The outbox makes it durable (see notifiers/outbox.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipewarden.v1 import alert_pb2

__all__ = ["Entry", "NotificationLog"]

RESOLVED = alert_pb2.ALERT_STATE_RESOLVED


@dataclass(slots=True)
class Entry:
    """What one receiver was told about one alert, and when."""

    severity: int
    """pipewarden.v1.Severity number."""
    state: int
    """pipewarden.v1.AlertState number."""
    sent_at: float
    """Unix seconds."""


class NotificationLog:
    """alert_id → receiver → Entry."""

    def __init__(self) -> None:
        self._alerts: dict[str, dict[str, Entry]] = {}

    def __len__(self) -> int:
        return sum(len(r) for r in self._alerts.values())

    def told(self, alert_id: str) -> tuple[str, ...]:
        """The receivers that have an entry for the alert, in the order they were first told."""
        return tuple(self._alerts.get(alert_id, ()))

    def get(self, alert_id: str, receiver: str) -> Entry | None:
        """The entry, if any."""
        return self._alerts.get(alert_id, {}).get(receiver)

    def due(
        self,
        alert_id: str,
        receiver: str,
        severity: int,
        state: int,
        now: float,
        repeat_interval: float,
    ) -> bool:
        """Whether the receiver should be told: never told, or the alert changed, or it was told
        at least `repeat_interval` seconds ago."""
        entry = self.get(alert_id, receiver)
        if entry is None or entry.severity != severity or entry.state != state:
            return True
        return now - entry.sent_at >= repeat_interval

    def record(self, alert_id: str, receiver: str, severity: int, state: int, now: float) -> None:
        """Remember that the receiver was (or is about to be) told."""
        self._alerts.setdefault(alert_id, {})[receiver] = Entry(severity, state, now)

    def forget(self, alert_id: str, receiver: str) -> None:
        """Drop the entry (a notification that went to the dead letters was not told)."""
        receivers = self._alerts.get(alert_id)
        if receivers is not None:
            receivers.pop(receiver, None)
            if not receivers:
                del self._alerts[alert_id]

    def prune(self, now: float, resolved_retention: float) -> int:
        """Drop entries of resolved alerts told more than `resolved_retention` seconds ago (the
        others stay: their acknowledgement or resolution is still to be told). Returns how many
        were dropped."""
        dropped = 0
        for alert_id in list(self._alerts):
            receivers = self._alerts[alert_id]
            for name in list(receivers):
                entry = receivers[name]
                if entry.state == RESOLVED and now - entry.sent_at >= resolved_retention:
                    del receivers[name]
                    dropped += 1
            if not receivers:
                del self._alerts[alert_id]
        return dropped

    def entries(self) -> Iterator[tuple[str, str, Entry]]:
        """Every (alert_id, receiver, entry)."""
        for alert_id, receivers in self._alerts.items():
            for name, entry in receivers.items():
                yield alert_id, name, entry
