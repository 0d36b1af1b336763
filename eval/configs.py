"""The detector configurations the evaluation compares."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipewarden.server.detection.settings import DetectionSettings

__all__ = ["BASELINE", "CONFIGS", "DEFAULT", "Config"]


@dataclass(frozen=True)
class Config:
    """One way to run the detection engine."""

    name: str
    """Key in results.json and on the command line."""
    title: str
    """What the table calls it."""
    enabled: frozenset[str] | None
    """The engine's `enabled`: None for the default combination."""
    settings: DetectionSettings
    """Thresholds (the defaults unless the configuration is about a setting)."""
    extra: bool = False
    """Not one the issue asks for: a variant shown for comparison."""


_DEFAULTS = DetectionSettings()
BASELINE = "peer"
"""The configuration the default must beat: the seed's peer rule alone."""
DEFAULT = "default"
"""The configuration the targets apply to."""

CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("peer", "peer rule alone (baseline)", frozenset({"peer"}), _DEFAULTS),
        *(
            Config(name, f"{name} alone", frozenset({name}), _DEFAULTS)
            for name in (
                "consecutive_failures",
                "success_rate",
                "duration_regression",
                "volume_drop",
                "staleness",
                "stuck_run",
            )
        ),
        Config(DEFAULT, "default (every detector)", None, _DEFAULTS),
        Config(
            "peer_robust",
            "peer rule alone, statistics: robust",
            frozenset({"peer"}),
            replace(_DEFAULTS, peer=replace(_DEFAULTS.peer, statistics="robust")),
            extra=True,
        ),
        Config(
            "peer_recent",
            "peer rule alone, window: recent",
            frozenset({"peer"}),
            replace(_DEFAULTS, peer=replace(_DEFAULTS.peer, window="recent")),
            extra=True,
        ),
        Config(
            "peer_by_schedule",
            "peer rule alone, scope: label:schedule",
            frozenset({"peer"}),
            replace(_DEFAULTS, peer=replace(_DEFAULTS.peer, scope="label:schedule")),
            extra=True,
        ),
        Config(
            "default_without_peer",
            "default, peer rule off",
            None,
            replace(_DEFAULTS, peer=replace(_DEFAULTS.peer, enabled=False)),
            extra=True,
        ),
    )
}
"""Every configuration, in the order of the report."""
