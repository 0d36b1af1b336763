"""Builders of AlertEvents for the notifier tests (the alert manager that makes them for real is
not there yet)."""

from __future__ import annotations

from typing import Any

from pipewarden.v1 import alert_pb2, anomaly_pb2

T0 = 1_780_000_000.0  # 2026-05-28, as in tests/helpers.py

SEVERITY = {
    "critical": anomaly_pb2.SEVERITY_CRITICAL,
    "high": anomaly_pb2.SEVERITY_HIGH,
    "medium": anomaly_pb2.SEVERITY_MEDIUM,
}
TYPE = {
    "fired": alert_pb2.ALERT_EVENT_TYPE_FIRED,
    "escalated": alert_pb2.ALERT_EVENT_TYPE_ESCALATED,
    "acknowledged": alert_pb2.ALERT_EVENT_TYPE_ACKNOWLEDGED,
    "resolved": alert_pb2.ALERT_EVENT_TYPE_RESOLVED,
}
STATE = {
    "fired": alert_pb2.ALERT_STATE_FIRING,
    "escalated": alert_pb2.ALERT_STATE_FIRING,
    "acknowledged": alert_pb2.ALERT_STATE_ACKNOWLEDGED,
    "resolved": alert_pb2.ALERT_STATE_RESOLVED,
}


def event(
    alert_id: str = "a1",
    severity: str = "critical",
    type: str = "fired",
    *,
    pipeline_id: str = "payments.settlement_daily",
    team: str = "payments",
    kind: int = anomaly_pb2.ANOMALY_KIND_CONSECUTIVE_FAILURES,
    message: str = "5 failures in a row (expected none)",
    at: float = T0,
    **alert: Any,
) -> alert_pb2.AlertEvent:
    """An AlertEvent of one alert, as the alert manager would emit it."""
    a = alert_pb2.Alert(
        alert_id=alert_id,
        fingerprint=f"{pipeline_id}/{kind}",
        pipeline_id=pipeline_id,
        team=team,
        kind=kind,
        severity=SEVERITY[severity],
        message=message,
        state=STATE[type],
        occurrences=alert.pop("occurrences", 3),
        observed=alert.pop("observed", 5.0),
        expected=alert.pop("expected", 0.0),
        **alert,
    )
    a.first_seen.FromSeconds(int(at) - 600)
    a.last_seen.FromSeconds(int(at))
    if type == "resolved":
        a.resolved_at.FromSeconds(int(at))
    e = alert_pb2.AlertEvent(alert=a, type=TYPE[type])
    e.time.FromSeconds(int(at))
    return e
