"""The `openlineage:` section of the configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipewarden.server.base.confparse import whole
from pipewarden.server.base.errors import ConfigError

__all__ = ["OpenLineageSettings", "parse_settings"]


@dataclass(frozen=True)
class OpenLineageSettings:
    """How OpenLineage jobs are given a team."""

    namespace_teams: Mapping[str, str] = field(default_factory=dict)
    """The team of a job whose events carry no `ownership` facet with a `team:NAME` owner, by
    the job's namespace."""
    default_team: str = "unowned"
    """The team of a job that neither its ownership facet nor its namespace names."""
    parent_as_upstream: bool = True
    """Count the `parent` run facet's job (an Airflow DAG for its tasks, say) among a run's
    upstream pipelines, beside the producers of its inputs. Turn it off when parents are
    orchestrators that fail because their children do, so that a child's alert is not
    ascribed to its parent."""
    max_datasets_per_event: int = 1000
    """Most datasets (inputs and outputs together) one event may name; an event naming more is
    refused (400) and changes nothing."""
    max_datasets_per_team: int = 50_000
    """Most (dataset, producing pipeline) pairs the producer map keeps for one team's
    pipelines, so that one team's events cannot fill memory (and the map's file); an event
    that would teach more is refused (400) and changes nothing; what is known stays known."""
    max_dataset_name_length: int = 1024
    """Longest dataset namespace, and longest dataset name, an event may name (400 beyond)."""


def parse_settings(raw: Any, key: str) -> OpenLineageSettings:
    """Validate the section; errors name the key."""
    if raw is None:
        return OpenLineageSettings()
    if not isinstance(raw, Mapping):
        raise ConfigError(key, f"expected a mapping, got {type(raw).__name__}")
    known = {
        "namespace_teams",
        "default_team",
        "parent_as_upstream",
        "max_datasets_per_event",
        "max_datasets_per_team",
        "max_dataset_name_length",
    }
    for k in raw:
        if k not in known:
            raise ConfigError(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
    teams = raw.get("namespace_teams") or {}
    if not isinstance(teams, Mapping):
        raise ConfigError(f"{key}.namespace_teams", "expected a mapping of namespace to team")
    for namespace, team in teams.items():
        if not isinstance(namespace, str) or not namespace:
            raise ConfigError(f"{key}.namespace_teams", f"{namespace!r} is not a namespace")
        if not isinstance(team, str) or not team.strip():
            raise ConfigError(f"{key}.namespace_teams.{namespace}", "expected a team name")
    default = raw.get("default_team", OpenLineageSettings.default_team)
    if not isinstance(default, str) or not default.strip():
        raise ConfigError(f"{key}.default_team", "expected a non-empty team name")
    parent = raw.get("parent_as_upstream", True)
    if not isinstance(parent, bool):
        raise ConfigError(f"{key}.parent_as_upstream", f"expected true or false, got {parent!r}")
    bounds = {
        name: whole(raw.get(name, getattr(OpenLineageSettings, name)), f"{key}.{name}", minimum=1)
        for name in ("max_datasets_per_event", "max_datasets_per_team", "max_dataset_name_length")
    }
    return OpenLineageSettings(
        namespace_teams=dict(teams), default_team=default, parent_as_upstream=parent, **bounds
    )
