"""Routing: which receivers hear of an alert, from its team and severity. Pure.

Routes are tried in order and the first whose `team` matches (or that has none) decides; its
list for the alert's severity names the receivers. When neither receivers nor routes are
configured, everything goes to a console receiver, so a fresh `make run` shows its alerts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipewarden.notifiers.config import ConsoleReceiver, Receiver, Route

__all__ = ["DEFAULT_CONSOLE", "Router"]

DEFAULT_CONSOLE = ConsoleReceiver(name="console")
"""The receiver used when none is configured."""


class Router:
    """Maps (team, severity) to receiver names."""

    def __init__(self, receivers: Sequence[Receiver], routes: Sequence[Route]) -> None:
        if not receivers and not routes:
            receivers = (DEFAULT_CONSOLE,)
            routes = (
                Route(team=None, critical=("console",), high=("console",), medium=("console",)),
            )
        self.receivers: Mapping[str, Receiver] = {r.name: r for r in receivers}
        """Every receiver by name."""
        self.routes: tuple[Route, ...] = tuple(routes)
        """The routes, in order."""
        for route in self.routes:
            for name in (*route.critical, *route.high, *route.medium):
                if name not in self.receivers:
                    raise ValueError(f"a route names receiver {name!r}, which does not exist")

    def route(self, team: str, severity: int) -> tuple[str, ...]:
        """The receivers of an alert of `team` at `severity` (a pipewarden.v1.Severity number);
        empty when no route matches."""
        for route in self.routes:
            if route.team is None or route.team == team:
                return route.receivers(severity)
        return ()
