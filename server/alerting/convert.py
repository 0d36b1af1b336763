"""The protobuf views of the alerting domain: the API messages, which the log records and
snapshots embed too (see `storage`)."""

from __future__ import annotations

from pipewarden.server.alerting.model import Alert, AlertEvent, Silence
from pipewarden.times import seconds, timestamp
from pipewarden.v1 import alert_pb2

__all__ = [
    "alert_from_message",
    "alert_message",
    "event_from_message",
    "event_message",
    "seconds",
    "silence_from_message",
    "silence_message",
    "timestamp",
]


def alert_message(a: Alert) -> alert_pb2.Alert:
    """The API view of an alert."""
    msg = alert_pb2.Alert(
        alert_id=a.alert_id,
        fingerprint=a.fingerprint,
        pipeline_id=a.pipeline_id,
        team=a.team,
        kind=a.kind,  # type: ignore[arg-type]
        severity=a.severity,  # type: ignore[arg-type]
        message=a.message,
        state=a.state,  # type: ignore[arg-type]
        occurrences=a.occurrences,
        silenced=a.silenced,
        caused_by=a.caused_by,
        untrusted_cause=a.untrusted_cause,
        acknowledged_by=a.acknowledged_by,
        impacted_pipelines=a.impacted_pipelines,
        impacted_teams=a.impacted_teams,
        observed=a.observed,
        expected=a.expected,
    )
    msg.first_seen.CopyFrom(timestamp(a.first_seen))
    msg.last_seen.CopyFrom(timestamp(a.last_seen))
    if a.acknowledged_at is not None:
        msg.acknowledged_at.CopyFrom(timestamp(a.acknowledged_at))
    if a.resolved_at is not None:
        msg.resolved_at.CopyFrom(timestamp(a.resolved_at))
    return msg


def alert_from_message(msg: alert_pb2.Alert) -> Alert:
    """The domain alert of an API message (bookkeeping at its defaults)."""
    return Alert(
        alert_id=msg.alert_id,
        pipeline_id=msg.pipeline_id,
        team=msg.team,
        kind=msg.kind,
        severity=msg.severity,
        message=msg.message,
        observed=msg.observed,
        expected=msg.expected,
        first_seen=seconds(msg.first_seen),
        last_seen=seconds(msg.last_seen),
        state=msg.state,
        occurrences=msg.occurrences,
        silenced=msg.silenced,
        caused_by=msg.caused_by,
        untrusted_cause=msg.untrusted_cause,
        acknowledged_by=msg.acknowledged_by,
        acknowledged_at=seconds(msg.acknowledged_at) if msg.HasField("acknowledged_at") else None,
        resolved_at=seconds(msg.resolved_at) if msg.HasField("resolved_at") else None,
        impacted_pipelines=tuple(msg.impacted_pipelines),
        impacted_teams=tuple(msg.impacted_teams),
        detected_severity=msg.severity,
    )


def event_message(e: AlertEvent) -> alert_pb2.AlertEvent:
    """The API view of an alert event."""
    return alert_pb2.AlertEvent(
        alert=alert_message(e.alert),
        type=e.type,  # type: ignore[arg-type]
        time=timestamp(e.time),
        notify=e.notify,
        previous_severity=e.previous_severity,  # type: ignore[arg-type]
        reason=e.reason,
    )


def event_from_message(msg: alert_pb2.AlertEvent) -> AlertEvent:
    """The domain event of an API message."""
    return AlertEvent(
        type=msg.type,
        alert=alert_from_message(msg.alert),
        time=seconds(msg.time),
        notify=msg.notify,
        previous_severity=msg.previous_severity,
        reason=msg.reason,
    )


def silence_message(s: Silence) -> alert_pb2.Silence:
    """The API view of a silence."""
    return alert_pb2.Silence(
        silence_id=s.silence_id,
        team=s.team,
        pipeline_id=s.pipeline_id,
        kind=s.kind,  # type: ignore[arg-type]
        starts_at=timestamp(s.starts_at),
        ends_at=timestamp(s.ends_at),
        created_by=s.created_by,
        comment=s.comment,
    )


def silence_from_message(msg: alert_pb2.Silence, now: float) -> Silence:
    """The domain silence of an API message; an absent start means `now`, an absent end 0."""
    return Silence(
        silence_id=msg.silence_id,
        team=msg.team,
        pipeline_id=msg.pipeline_id,
        kind=msg.kind,
        starts_at=seconds(msg.starts_at) if msg.HasField("starts_at") else now,
        ends_at=seconds(msg.ends_at) if msg.HasField("ends_at") else 0.0,
        created_by=msg.created_by,
        comment=msg.comment,
    )
