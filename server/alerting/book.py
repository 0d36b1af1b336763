"""The alert book: every alert kept, indexed, and the bounded history of what happened to them.

Pure bookkeeping, no decisions: alerts by id and by (pipeline, kind), how many are open per
pipeline, which open alerts each root-cause pipeline explains, and the last events per team.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, KeysView

from pipewarden.server.alerting.model import ACKNOWLEDGED, FIRING, RESOLVED, Alert, AlertEvent

__all__ = ["AlertBook"]

_STATE_ORDER = {FIRING: 0, ACKNOWLEDGED: 1, RESOLVED: 2}


class AlertBook:
    """Alerts (one per pipeline and kind: the latest episode), their indexes and history."""

    def __init__(self, history_size: int) -> None:
        self.history_size = history_size
        self._by_pipeline: dict[str, dict[int, Alert]] = {}
        self._by_id: dict[str, Alert] = {}
        self._open: dict[str, int] = {}
        self._explains: dict[str, set[str]] = {}
        self._history: dict[str, deque[AlertEvent]] = {}

    # -- alerts ----------------------------------------------------------------------------------

    def put(self, alert: Alert) -> None:
        """Keep `alert`, in place of its fingerprint's previous one (or a previous copy)."""
        before = self.current(alert.pipeline_id, alert.kind)
        if before is not None:
            self.remove(before)
        self._by_pipeline.setdefault(alert.pipeline_id, {})[alert.kind] = alert
        self._by_id[alert.alert_id] = alert
        if alert.is_open:
            self._open[alert.pipeline_id] = self._open.get(alert.pipeline_id, 0) + 1
            if alert.caused_by:
                self._explains.setdefault(alert.caused_by, set()).add(alert.alert_id)

    def remove(self, alert: Alert) -> None:
        """Forget `alert`."""
        self._by_id.pop(alert.alert_id, None)
        alerts = self._by_pipeline.get(alert.pipeline_id)
        if alerts is not None and alerts.get(alert.kind) is alert:
            del alerts[alert.kind]
            if not alerts:
                del self._by_pipeline[alert.pipeline_id]
        if alert.is_open:
            self.closing(alert)

    def closing(self, alert: Alert) -> bool:
        """`alert` is about to resolve (or be forgotten) while open: count it out. True when its
        pipeline has no open alert left."""
        pid = alert.pipeline_id
        left = self._open.get(pid, 0) - 1
        if left > 0:
            self._open[pid] = left
        else:
            self._open.pop(pid, None)
        if alert.caused_by:
            self._explained_no_more(alert)
        return left <= 0

    def set_cause(self, alert: Alert, cause: str) -> None:
        """Record that `cause` (a pipeline, or "") explains the open `alert`."""
        if alert.caused_by:
            self._explained_no_more(alert)
        alert.caused_by = cause
        if cause:
            self._explains.setdefault(cause, set()).add(alert.alert_id)

    def _explained_no_more(self, alert: Alert) -> None:
        explained = self._explains.get(alert.caused_by)
        if explained is not None:
            explained.discard(alert.alert_id)
            if not explained:
                del self._explains[alert.caused_by]

    def get(self, alert_id: str) -> Alert | None:
        """An alert by id, or None."""
        return self._by_id.get(alert_id)

    def current(self, pipeline_id: str, kind: int) -> Alert | None:
        """The latest alert of a fingerprint, open or resolved, or None."""
        return self._by_pipeline.get(pipeline_id, {}).get(kind)

    def of_pipeline(self, pipeline_id: str) -> list[Alert]:
        """A pipeline's alerts, one per kind."""
        return list(self._by_pipeline.get(pipeline_id, {}).values())

    def has_alerts(self, pipeline_id: str) -> bool:
        """Whether any alert of the pipeline is kept."""
        return pipeline_id in self._by_pipeline

    def open_alerts(self) -> list[Alert]:
        """Every open alert."""
        return [a for a in self._by_id.values() if a.is_open]

    def open_pipelines(self) -> KeysView[str]:
        """The pipelines with an open alert."""
        return self._open.keys()

    def root_of(self, pipeline_id: str) -> str | None:
        """The root cause explaining a pipeline's open alerts, the pipeline itself when none
        does; None when it has no open alert."""
        if pipeline_id not in self._open:
            return None
        for a in self._by_pipeline[pipeline_id].values():
            if a.is_open:
                return a.caused_by or pipeline_id
        return None

    def opened_at(self, pipeline_id: str) -> float:
        """When the oldest open alert of a pipeline fired (infinity when none is open)."""
        alerts = self._by_pipeline.get(pipeline_id, {}).values()
        return min((a.first_seen for a in alerts if a.is_open), default=float("inf"))

    def open_count(self) -> int:
        """How many alerts are open."""
        return sum(self._open.values())

    def explained_by(self, root: str) -> list[Alert]:
        """The open alerts that `root`'s alerts explain."""
        return [self._by_id[i] for i in self._explains.get(root, ()) if i in self._by_id]

    def __iter__(self) -> Iterator[Alert]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def alerts(self, *, team: str = "", min_severity: int = 0, state: int = 0) -> list[Alert]:
        """Matching alerts: open before resolved, most severe first, then oldest first."""
        found = [
            a
            for a in self._by_id.values()
            if (not team or a.team == team)
            and a.severity >= min_severity
            and (not state or a.state == state)
        ]
        found.sort(
            key=lambda a: (a.state == RESOLVED, -a.severity, _STATE_ORDER[a.state], a.first_seen)
        )
        return found

    def routed(self, team: str = "") -> dict[str, dict[int, list[Alert]]]:
        """Open alerts by team, then severity (each list oldest first)."""
        out: dict[str, dict[int, list[Alert]]] = {}
        for a in self.alerts(team=team):
            if a.is_open:
                out.setdefault(a.team, {}).setdefault(a.severity, []).append(a)
        return out

    # -- history ---------------------------------------------------------------------------------

    def remember(self, event: AlertEvent) -> None:
        """Add an event to its team's history, dropping the oldest beyond the bound."""
        team = event.alert.team
        h = self._history.get(team)
        if h is None:
            h = self._history[team] = deque(maxlen=self.history_size)
        h.append(event)

    def history(self, team: str = "", limit: int = 100) -> list[AlertEvent]:
        """The latest events, newest first; one team's, or every team's."""
        events = list(self._history.get(team, ())) if team else self.all_events()
        return events[::-1][:limit]

    def all_events(self) -> list[AlertEvent]:
        """Every team's history, oldest first."""
        events = [e for h in self._history.values() for e in h]
        events.sort(key=lambda e: e.time)
        return events
