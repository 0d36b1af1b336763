"""Alerting settings: the `alerts:` section of the configuration, every key optional."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipewarden.server.base.errors import ConfigError

__all__ = ["AlertSettings", "BlastRadiusSettings", "EscalationSettings", "parse_trusted_teams"]

HOUR = 3600.0


@dataclass(frozen=True)
class EscalationSettings:
    """How long an alert may stay firing, unacknowledged, before it is raised one severity."""

    medium: float = 4 * HOUR
    """Seconds before an unacknowledged MEDIUM alert becomes HIGH; 0 never escalates it."""
    high: float = 1 * HOUR
    """Seconds before an unacknowledged HIGH alert becomes CRITICAL (and pages); 0 never."""


@dataclass(frozen=True)
class BlastRadiusSettings:
    """How a root-cause alert's severity rises with what it breaks downstream. Counted: the
    downstream pipelines whose open alerts it explains, and their teams other than its own."""

    enabled: bool = True
    """Raise root-cause alerts with their blast radius."""
    high_pipelines: int = 5
    """At least HIGH when it explains this many downstream pipelines' alerts (0: never)."""
    critical_pipelines: int = 20
    """CRITICAL when it explains this many (0: never)."""
    high_teams: int = 2
    """At least HIGH when those pipelines belong to this many other teams (0: never)."""
    critical_teams: int = 4
    """CRITICAL when they belong to this many other teams (0: never)."""


@dataclass(frozen=True)
class AlertSettings:
    """The alert lifecycle's timings and bounds."""

    resolve_after_runs: int = 2
    """An alert resolves once its anomaly has been clear for this many of the pipeline's runs.
    A failure alert (failures in a row) resolves with the next successful run."""
    hold_seconds: float = 0.0
    """...and clear for at least this long, so a flapping anomaly does not resolve and fire
    again and again. 0: the runs alone decide."""
    escalate_after: EscalationSettings = field(default_factory=EscalationSettings)
    """Escalation of alerts nobody acknowledges."""
    repeat_interval_seconds: float = 4 * HOUR
    """A firing, unacknowledged alert is notified again this often; 0 never repeats."""
    history_size: int = 1000
    """Alert events kept per team for ListAlertHistory (the oldest are dropped)."""
    resolved_retention_seconds: float = 24 * HOUR
    """A resolved alert stays listed this long (or until its problem fires again)."""
    watch_queue_size: int = 1000
    """Events a WatchAlerts stream may fall behind by before it is ended with
    RESOURCE_EXHAUSTED (the client should reconnect)."""
    blast_radius: BlastRadiusSettings = field(default_factory=BlastRadiusSettings)
    """Severity of root causes by their impact downstream."""
    trusted_teams: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Whose lineage may explain, and so mute, a team's alerts: by team, the other teams it
    trusts (`"*"` in a list: every team; `"*"` as a key: trusted by every team). A team always
    trusts itself, and by default nobody else: an alert explained only through another team's
    pipeline (or its claim to produce a dataset) notifies, showing that pipeline as its
    `untrusted_cause`. Applies to every source of lineage (gRPC upstream ids, OpenLineage)."""


def parse_trusted_teams(value: Any, key: str) -> dict[str, tuple[str, ...]]:
    """Validate `alerts.trusted_teams`: a mapping of team to a list of teams."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping of team to a list of teams, got {value!r}")
    out: dict[str, tuple[str, ...]] = {}
    for team, others in value.items():
        if not isinstance(team, str) or not team.strip():
            raise ConfigError(key, f"{team!r} is not a team name")
        where = f"{key}.{team}"
        if not isinstance(others, list):
            raise ConfigError(where, f"expected a list of teams, got {others!r}")
        for other in others:
            if not isinstance(other, str) or not other.strip():
                raise ConfigError(where, f"{other!r} is not a team name")
        out[team] = tuple(others)
    return out
