"""Alerting state on disk: log records of changes, and the snapshot frame of the whole state.

A record holds each changed alert whole, as it was after the change, so replay puts it in place
without deciding anything again (no clock, no detector, no notification).
"""

from __future__ import annotations

from collections.abc import Iterable

from pipewarden.server.alerting.convert import (
    alert_from_message,
    alert_message,
    event_message,
    silence_message,
)
from pipewarden.server.alerting.model import Alert, AlertEvent, Silence
from pipewarden.storage.v1 import storage_pb2

__all__ = ["alert_changes", "silence_change", "stored_alert", "unstored_alert"]


def stored_alert(a: Alert) -> storage_pb2.StoredAlert:
    """An alert and its bookkeeping, for the log and snapshots."""
    msg = storage_pb2.StoredAlert(
        alert=alert_message(a),
        detected_severity=a.detected_severity,
        anomaly_present=a.anomaly_present,
        runs_at_last_seen=a.runs_at_last_seen,
        clear_runs=a.clear_runs,
        notified=a.notified,
    )
    if a.cleared_at is not None:
        msg.cleared_at = a.cleared_at
    if a.unhandled_since is not None:
        msg.unhandled_since = a.unhandled_since
    if a.last_notified_at is not None:
        msg.last_notified_at = a.last_notified_at
    return msg


def unstored_alert(msg: storage_pb2.StoredAlert) -> Alert:
    """The alert a stored message holds."""
    a = alert_from_message(msg.alert)
    a.detected_severity = msg.detected_severity
    a.anomaly_present = msg.anomaly_present
    a.runs_at_last_seen = msg.runs_at_last_seen
    a.clear_runs = msg.clear_runs
    a.notified = msg.notified
    a.cleared_at = msg.cleared_at if msg.HasField("cleared_at") else None
    a.unhandled_since = msg.unhandled_since if msg.HasField("unhandled_since") else None
    a.last_notified_at = msg.last_notified_at if msg.HasField("last_notified_at") else None
    return a


def alert_changes(alerts: Iterable[Alert], events: Iterable[AlertEvent]) -> bytes:
    """The log record of changed alerts and the events the change made."""
    record = storage_pb2.LogRecord(
        alerts=storage_pb2.AlertChanges(
            alerts=[stored_alert(a) for a in alerts],
            events=[event_message(e) for e in events],
        )
    )
    return record.SerializeToString()


def silence_change(s: Silence, ended_by: str = "") -> bytes:
    """The log record of a silence created, or ended early by `ended_by`."""
    change = storage_pb2.SilenceChange(silence=silence_message(s), ended_by=ended_by)
    return storage_pb2.LogRecord(silence=change).SerializeToString()
