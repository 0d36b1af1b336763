"""The alerting domain: alerts, their events, silences. Plain objects, no I/O.

The numbers of states, event types, severities and kinds are those of the pipewarden.v1 enums,
so no table is needed to translate; severities and kinds, and their names, are those of
`pipewarden.names`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from pipewarden.names import (
    CONSECUTIVE_FAILURES,
    CRITICAL,
    HIGH,
    KIND_NAMES,
    MEDIUM,
    SEVERITY_NAMES,
)

__all__ = [
    "ACKNOWLEDGED",
    "ACKNOWLEDGED_EVENT",
    "CONSECUTIVE_FAILURES",
    "CRITICAL",
    "ESCALATED",
    "FIRED",
    "FIRING",
    "HIGH",
    "KIND_NAMES",
    "MEDIUM",
    "REPEATED",
    "RESOLVED",
    "RESOLVED_EVENT",
    "SEVERITY_NAMES",
    "Alert",
    "AlertEvent",
    "Silence",
    "fingerprint",
]

# pipewarden.v1.AlertState
FIRING: Final = 1
ACKNOWLEDGED: Final = 2
RESOLVED: Final = 3

# pipewarden.v1.AlertEventType
FIRED: Final = 1
ESCALATED: Final = 2
ACKNOWLEDGED_EVENT: Final = 3
RESOLVED_EVENT: Final = 4
REPEATED: Final = 5


def fingerprint(pipeline_id: str, kind: int) -> str:
    """The stable identity of a problem: its pipeline and its kind."""
    return f"{pipeline_id}/{KIND_NAMES.get(kind, str(kind))}"


@dataclass(slots=True)
class Alert:
    """One problem of one pipeline, in one episode (from firing to resolving)."""

    alert_id: str
    """Unique id of this episode."""
    pipeline_id: str
    """The pipeline with the problem."""
    team: str
    """Its team."""
    kind: int
    """The anomaly kind."""
    severity: int
    """Current severity: the highest the detector gave, raised by escalation and blast radius.
    It never falls while the alert is open."""
    message: str
    """The latest anomaly's message."""
    observed: float
    """The latest anomaly's observed value."""
    expected: float
    """The latest anomaly's expected value."""
    first_seen: float
    """When the episode began (Unix seconds)."""
    last_seen: float
    """When an evaluation last found the anomaly."""
    state: int = FIRING
    """FIRING, ACKNOWLEDGED or RESOLVED."""
    occurrences: int = 1
    """Evaluations that found the anomaly in this episode."""
    silenced: bool = False
    """A silence mutes it now."""
    caused_by: str = ""
    """The upstream pipeline whose open alert explains (and mutes) this one, along lineage its
    team trusts; empty when none."""
    untrusted_cause: str = ""
    """When nothing trusted explains it: the upstream pipeline whose open alert would, along
    lineage its team does not trust. Shown, never muting; empty when none."""
    acknowledged_by: str = ""
    """Who acknowledged it."""
    acknowledged_at: float | None = None
    """When."""
    resolved_at: float | None = None
    """When it resolved."""
    impacted_pipelines: tuple[str, ...] = ()
    """As a root cause: the downstream pipelines whose alerts it explains."""
    impacted_teams: tuple[str, ...] = ()
    """Their teams."""
    # -- bookkeeping ------------------------------------------------------------------------
    detected_severity: int = MEDIUM
    """The severity the detector last gave."""
    anomaly_present: bool = True
    """Whether the latest evaluation found the anomaly."""
    runs_at_last_seen: int = 0
    """The pipeline's counted runs when the anomaly was last found."""
    clear_runs: int = 0
    """Runs counted since, while clear."""
    cleared_at: float | None = None
    """When the anomaly was first found clear; None while present."""
    unhandled_since: float | None = None
    """Since when it has been firing, unacknowledged, unmuted and unexplained (the escalation
    clock); None when it is not."""
    last_notified_at: float | None = None
    """When receivers were last told about it."""
    notified: bool = False
    """Whether receivers were told it fired: then they are told when it resolves."""

    @property
    def fingerprint(self) -> str:
        """The stable identity of the problem."""
        return fingerprint(self.pipeline_id, self.kind)

    @property
    def is_open(self) -> bool:
        """Firing or acknowledged."""
        return self.state != RESOLVED

    @property
    def muted(self) -> bool:
        """Silenced, or explained by an upstream root cause: receivers are not told."""
        return self.silenced or bool(self.caused_by)

    def copy(self) -> Alert:
        """A copy, as events carry the alert as it was."""
        return dataclasses.replace(self)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One change to one alert."""

    type: int
    """FIRED, ESCALATED, ACKNOWLEDGED_EVENT, RESOLVED_EVENT or REPEATED."""
    alert: Alert
    """The alert after the change (a copy)."""
    time: float
    """When, by the server's clock."""
    notify: bool
    """Whether receivers are to be told."""
    previous_severity: int = 0
    """For ESCALATED, the severity before."""
    reason: str = ""
    """Why, in plain words."""


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes the notifications of the alerts it matches between starts_at and ends_at. An
    empty matcher (or kind 0) matches everything."""

    silence_id: str
    team: str
    pipeline_id: str
    kind: int
    starts_at: float
    ends_at: float
    created_by: str
    comment: str

    def active(self, now: float) -> bool:
        """Whether it mutes now."""
        return self.starts_at <= now < self.ends_at

    def matches(self, alert: Alert) -> bool:
        """Whether its matchers match `alert` (whatever the time)."""
        return (
            (not self.team or self.team == alert.team)
            and (not self.pipeline_id or self.pipeline_id == alert.pipeline_id)
            and (not self.kind or self.kind == alert.kind)
        )
