"""The rules of the alert lifecycle that depend on settings, as pure functions."""

from __future__ import annotations

from pipewarden.server.alerting.model import CONSECUTIVE_FAILURES, CRITICAL, HIGH, MEDIUM, Alert
from pipewarden.server.alerting.settings import (
    AlertSettings,
    BlastRadiusSettings,
    EscalationSettings,
)

__all__ = ["blast_severity", "escalated", "escalation_delay", "resolvable", "span"]


def resolvable(alert: Alert, settings: AlertSettings, now: float) -> bool:
    """Whether an open alert whose anomaly has cleared may resolve at `now`: clear for enough
    of the pipeline's runs (`resolve_after_runs`; for failures in a row, one run, since only a
    success ends a streak) and for `hold_seconds`."""
    if alert.anomaly_present or alert.cleared_at is None:
        return False
    runs = 1 if alert.kind == CONSECUTIVE_FAILURES else settings.resolve_after_runs
    return alert.clear_runs >= runs and now - alert.cleared_at >= settings.hold_seconds


def escalation_delay(escalation: EscalationSettings, severity: int) -> float:
    """Seconds an unacknowledged alert of `severity` waits before it is raised; 0 never."""
    return {MEDIUM: escalation.medium, HIGH: escalation.high}.get(severity, 0.0)


def escalated(escalation: EscalationSettings, severity: int, waited: float) -> tuple[int, float]:
    """The severity an alert of `severity` reaches after `waited` seconds unacknowledged, and
    the delays that took (their sum): every step whose delay has passed, not only the next, so
    an alert that waited through several (a server stopped meanwhile) is raised to the highest
    at once."""
    total = 0.0
    while (delay := escalation_delay(escalation, severity)) and waited - total >= delay:
        total += delay
        severity += 1
    return severity, total


def blast_severity(blast: BlastRadiusSettings, pipelines: int, other_teams: int) -> int:
    """The least severity of a root cause that explains alerts of `pipelines` downstream
    pipelines of `other_teams` teams besides its own; 0 when its blast radius raises nothing."""
    if not blast.enabled:
        return 0

    def reached(limit: int, value: int) -> bool:
        return bool(limit) and value >= limit

    if reached(blast.critical_pipelines, pipelines) or reached(blast.critical_teams, other_teams):
        return CRITICAL
    if reached(blast.high_pipelines, pipelines) or reached(blast.high_teams, other_teams):
        return HIGH
    return 0


def span(seconds: float) -> str:
    """A duration in words for messages: 45s, 30m, 4h, 1.5h."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f}h"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"
