"""The alert lifecycle: anomalies in, alerts and alert events out.

One alert per fingerprint (pipeline, kind) and episode. Detection hands over each evaluated
pipeline's complete list of anomalies (the AlertSink seam); a new one fires an alert, a repeat
raises its occurrences (and its severity, when the detector's is higher), and one that has
cleared for `resolve_after_runs` of the pipeline's runs (a failure alert: the next successful
run) and `hold_seconds` resolves it. A timer (`tick`) escalates what nobody acknowledges,
repeats what still fires, and follows silences as they start and end.

Receivers are told (an event's `notify`) unless a silence mutes the alert or an upstream
pipeline's open alert explains it (`caused_by`, see lineage) along lineage the alert's team
trusts; an explanation it does not trust (another team's pipeline) is shown as
`untrusted_cause` and mutes nothing. Muted alerts exist and are listed all the same; if they
stop being muted before they resolve, they fire again with notify set, and when an alert
resolves, whoever was told it fired is told it resolved, silenced or not.

Every change is a log record holding the changed alerts whole (see storage), appended in the
same step as the change; events reach subscribers (the feed) only once their record is durable.
A detection pass's changes are one record, made by `flush` at the end of the pass, so that
lineage is judged with every pipeline of the pass evaluated: a downstream failure that arrives
with its upstream one is explained, not paged. Occurrence counts and the like change without an
event and are logged lazily, by the timer, at most DIRTY_BATCH alerts a tick.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from pipewarden.server.alerting import lineage as lineage_mod
from pipewarden.server.alerting.book import AlertBook
from pipewarden.server.alerting.convert import (
    event_from_message,
    event_message,
    silence_from_message,
    silence_message,
)
from pipewarden.server.alerting.feed import AlertFeed
from pipewarden.server.alerting.lineage import Lineage, TeamTrust
from pipewarden.server.alerting.model import (
    ACKNOWLEDGED,
    ACKNOWLEDGED_EVENT,
    CRITICAL,
    ESCALATED,
    FIRED,
    FIRING,
    REPEATED,
    RESOLVED,
    RESOLVED_EVENT,
    SEVERITY_NAMES,
    Alert,
    AlertEvent,
    Silence,
)
from pipewarden.server.alerting.policy import blast_severity, escalated, resolvable, span
from pipewarden.server.alerting.settings import AlertSettings
from pipewarden.server.alerting.silences import Silences, check_silence
from pipewarden.server.alerting.storage import (
    alert_changes,
    silence_change,
    stored_alert,
    unstored_alert,
)
from pipewarden.server.base import failpoints, metrics
from pipewarden.server.base.errors import FailedPrecondition, InvalidArgument, NotFound
from pipewarden.server.base.logsafe import safe
from pipewarden.server.core.detect import Anomaly
from pipewarden.server.core.shards import PipelineState
from pipewarden.server.core.validation import format_time
from pipewarden.server.storage.eventlog import EventLog
from pipewarden.storage.v1 import storage_pb2

__all__ = ["DIRTY_BATCH", "AlertManager", "should_notify"]

log = logging.getLogger(__name__)

DIRTY_BATCH = 500
"""Alerts changed without an event (occurrences, last_seen, clearing) whose state each timer
tick logs, those changed first first: within a second as long as fewer change, and a tick
stays short in an alert storm. A crash loses at most what was not logged yet, never a
transition."""


def should_notify(alert: Alert) -> bool:
    """Whether receivers are to be told about `alert` now: open, not silenced, not explained
    by an upstream root cause."""
    return alert.is_open and not alert.muted


class AlertManager:
    """The alert lifecycle over an AlertBook, silences and lineage; implements AlertSink."""

    def __init__(
        self,
        settings: AlertSettings,
        event_log: EventLog,
        feed: AlertFeed | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.log = event_log
        self.feed = feed if feed is not None else AlertFeed(event_log)
        """Where events go once durable."""
        self.clock = clock
        """The time for timers and requests; detection passes hand over their own `now`."""
        self.book = AlertBook(settings.history_size)
        """The alerts and their history: what reads read."""
        self.lineage = Lineage(TeamTrust(settings.trusted_teams))
        self.silences = Silences()
        self._fresh: dict[str, Alert] = {}
        """Fired since the last flush; their FIRED events wait for lineage to settle."""
        self._changed: dict[str, Alert] = {}
        self._dirty: dict[str, Alert] = {}
        self._events: list[AlertEvent] = []
        self._lineage_changed = False
        """A pipeline's openness or upstream changed since root causes were last judged for
        every open alert (at the next tick: a new alert's own cause is judged at once)."""
        self._impact_dirty: set[str] = set()

    # -- the AlertSink seam ----------------------------------------------------------------------

    def receive(self, pipeline: PipelineState, anomalies: Sequence[Anomaly], now: float) -> None:
        """Take a pipeline's complete current anomalies (evaluated at `now`). Call `flush` at
        the end of a detection pass to log the changes and publish their events."""
        pid = pipeline.pipeline_id
        if self.lineage.update(pid, pipeline.upstream, pipeline.team):
            self._lineage_changed = True
        if not anomalies and not self.book.has_alerts(pid):
            return
        present = set()
        for anomaly in anomalies:
            present.add(anomaly.kind)
            alert = self.book.current(pid, anomaly.kind)
            if alert is None or not alert.is_open:
                self._open_alert(pipeline, anomaly, now)
            else:
                self._seen_again(alert, pipeline, anomaly, now)
        for alert in self.book.of_pipeline(pid):
            if alert.kind not in present and alert.is_open:
                self._seen_clear(alert, pipeline, now)

    def flush(self, now: float | None = None, *, announce: bool = True) -> int:
        """End of a detection pass: settle root causes, announce what fired, log the pass's
        changes as one record and hand its events to the feed. Returns the log position to
        wait for. With `announce` false (a timer, perhaps in the middle of a pass), what fired
        waits for the end of the pass."""
        return self._flush(self.clock() if now is None else now, announce=announce, timer=False)

    def _flush(self, now: float, *, announce: bool, timer: bool) -> int:
        causes_changed = self._settle_lineage() if timer else []
        if announce and self._fresh:
            self._settle_fresh_causes()
        for alert in list(self._fresh.values()) if announce else []:
            self._announce(alert, now)
        for alert in causes_changed:
            self._announce_if_unmuted(alert, now, "no longer explained by an upstream alert")
        self._settle_impact(now)
        return self._commit()

    def learn_lineage(self, pipelines: Iterable[PipelineState]) -> None:
        """Take the upstream pipelines of every pipeline (after recovery), so that root causes
        are known before each pipeline is evaluated again."""
        for p in pipelines:
            self.lineage.update(p.pipeline_id, p.upstream, p.team)
        # Causes recovered from the log were judged by the rules of their time (trust may have
        # been configured since): the next tick judges them again.
        self._lineage_changed = True

    # -- the timer -------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> int:
        """Follow the clock: silences that started or ended, holds that passed, escalation of
        unacknowledged alerts, repeats of firing ones, and retention. Returns the log position
        to wait for."""
        failpoints.hit("alert-tick")
        now = self.clock() if now is None else now
        self.silences.forget_ended(now)
        for alert in self.book.open_alerts():
            self._follow(alert, now)
        self._forget_resolved(now)
        for alert_id in list(itertools.islice(self._dirty, DIRTY_BATCH)):
            self._changed[alert_id] = self._dirty.pop(alert_id)
        return self._flush(now, announce=False, timer=True)

    def _follow(self, alert: Alert, now: float) -> None:
        self._update_silenced(alert, now)
        if not alert.anomaly_present:
            if resolvable(alert, self.settings, now):
                self._resolve(alert, now)
            return
        if alert.state != FIRING or alert.muted:
            self._set_unhandled(alert, None)
            return
        if alert.unhandled_since is None:
            self._set_unhandled(alert, now)
        if not alert.notified:
            self._announce_if_unmuted(alert, now, "no longer silenced")
            return
        assert alert.unhandled_since is not None
        target, waited = escalated(
            self.settings.escalate_after, alert.severity, now - alert.unhandled_since
        )
        repeat = self.settings.repeat_interval_seconds
        if target > alert.severity:
            self._raise(alert, target, now, f"unacknowledged for {span(waited)}")
        elif repeat and now - (alert.last_notified_at or alert.first_seen) >= repeat:
            alert.last_notified_at = now
            self._emit(
                REPEATED, alert, now, notify=True, reason=f"still firing after {span(repeat)}"
            )

    # -- requests --------------------------------------------------------------------------------

    def acknowledge(self, alert_id: str, by: str) -> tuple[Alert, int]:
        """Record that `by` handles the alert; it stops escalating and repeating. Returns the
        alert and the log position to wait for before answering. Acknowledging twice keeps the
        first acknowledgement."""
        if not alert_id:
            raise InvalidArgument("alert_id is required")
        if not by.strip():
            raise InvalidArgument("by is required: say who acknowledges the alert")
        alert = self.book.get(alert_id)
        if alert is None:
            raise NotFound(
                f"no alert {alert_id!r}: it never existed, or it resolved long enough ago to be "
                "forgotten (ListAlerts shows the current ones)",
            )
        if alert.state == RESOLVED:
            raise FailedPrecondition(f"alert {alert_id} has already resolved: nothing to handle")
        if alert.state == ACKNOWLEDGED:
            return alert.copy(), self.log.last_seq
        now = self.clock()
        alert.state = ACKNOWLEDGED
        alert.acknowledged_by = by
        alert.acknowledged_at = now
        alert.unhandled_since = None
        self._emit(
            ACKNOWLEDGED_EVENT, alert, now, notify=alert.notified, reason=f"acknowledged by {by}"
        )
        return alert.copy(), self._commit()

    def create_silence(self, silence: Silence) -> tuple[Silence, int]:
        """Check and add a silence (its id is assigned here); mute what it matches. Raises
        InvalidArgument when it cannot be created."""
        now = self.clock()
        check_silence(silence, now)
        created = replace(silence, silence_id=self.silences.new_id())
        record = silence_change(created)  # before any change: it is what can fail
        self.log.append(record)
        self.silences.put(created)
        log.info(
            "silence %s by %s until %s: team=%s pipeline=%s kind=%d",
            created.silence_id,
            safe(created.created_by),
            format_time(created.ends_at),
            safe(created.team),
            safe(created.pipeline_id),
            created.kind,
        )
        return created, self._remute(now)

    def delete_silence(self, silence_id: str, by: str) -> tuple[Silence, int]:
        """End a silence now; what it muted is unmuted (and fires, if receivers were never
        told). Returns the silence as ended and the log position to wait for."""
        if not silence_id:
            raise InvalidArgument("silence_id is required")
        if not by.strip():
            raise InvalidArgument("by is required: say who ends the silence")
        now = self.clock()
        found = self.silences.get(silence_id)
        if found is None or found.ends_at <= now:
            raise NotFound(f"no silence {silence_id!r} that has not ended")
        ended = replace(found, ends_at=now)
        self.log.append(silence_change(ended, ended_by=by))
        self.silences.put(ended)
        log.info("silence %s ended by %s", silence_id, safe(by))
        return ended, self._remute(now)

    def _remute(self, now: float) -> int:
        for alert in self.book.open_alerts():
            self._update_silenced(alert, now)
            if alert.muted:
                self._set_unhandled(alert, None)
            else:
                self._announce_if_unmuted(alert, now, "no longer silenced")
        return self._commit()

    # -- reads -----------------------------------------------------------------------------------

    def current_silences(self, team: str = "") -> list[Silence]:
        """Silences that have not ended, soonest ending first."""
        return self.silences.current(self.clock(), team)

    # -- durability ------------------------------------------------------------------------------

    def dump(self) -> storage_pb2.AlertsSnapshot:
        """The whole alerting state, for a snapshot (taken at once, without yielding)."""
        return storage_pb2.AlertsSnapshot(
            alerts=[stored_alert(a) for a in self.book],
            silences=[silence_message(s) for s in self.silences],
            history=[event_message(e) for e in self.book.all_events()],
        )

    def restore(self, snap: storage_pb2.AlertsSnapshot) -> None:
        """Take the state of a snapshot (on an empty manager, before replay)."""
        for s in snap.silences:
            self.silences.put(silence_from_message(s, 0.0))
        for msg in snap.alerts:
            self.book.put(unstored_alert(msg))
        for e in snap.history:
            self.book.remember(event_from_message(e))

    def replay(self, record: storage_pb2.LogRecord) -> None:
        """Apply a logged change again (recovery): put the alerts and silences in place and
        add the events to the history. Nothing is decided, nothing is published."""
        entry = record.WhichOneof("entry")
        if entry == "alerts":
            for msg in record.alerts.alerts:
                self.book.put(unstored_alert(msg))
            for e in record.alerts.events:
                self.book.remember(event_from_message(e))
        elif entry == "silence":
            self.silences.put(silence_from_message(record.silence.silence, 0.0))

    # -- transitions -----------------------------------------------------------------------------

    def _open_alert(self, pipeline: PipelineState, anomaly: Anomaly, now: float) -> None:
        alert = Alert(
            alert_id=self._new_id(),
            pipeline_id=pipeline.pipeline_id,
            team=anomaly.team,
            kind=anomaly.kind,
            severity=anomaly.severity,
            message=anomaly.message,
            observed=anomaly.observed,
            expected=anomaly.expected,
            first_seen=now,
            last_seen=now,
            detected_severity=anomaly.severity,
            runs_at_last_seen=pipeline.total - anomaly.after_runs,
        )
        self.book.put(alert)
        self._fresh[alert.alert_id] = alert
        self._lineage_changed = True

    def _seen_again(
        self, alert: Alert, pipeline: PipelineState, anomaly: Anomaly, now: float
    ) -> None:
        alert.occurrences += 1
        alert.last_seen = now
        alert.message = anomaly.message
        alert.observed = anomaly.observed
        alert.expected = anomaly.expected
        alert.detected_severity = anomaly.severity
        alert.runs_at_last_seen = pipeline.total - anomaly.after_runs
        if not alert.anomaly_present:
            alert.anomaly_present = True
            alert.cleared_at = None
            alert.clear_runs = 0
        self._dirty[alert.alert_id] = alert
        if anomaly.severity > alert.severity:
            if alert.alert_id in self._fresh:
                alert.severity = anomaly.severity  # its FIRED event is not out yet
            else:
                self._raise(alert, anomaly.severity, now, "the anomaly grew more severe")

    def _seen_clear(self, alert: Alert, pipeline: PipelineState, now: float) -> None:
        if alert.anomaly_present:
            alert.anomaly_present = False
            alert.cleared_at = now
            alert.unhandled_since = None
        alert.clear_runs = pipeline.total - alert.runs_at_last_seen
        self._dirty[alert.alert_id] = alert
        if resolvable(alert, self.settings, now):
            self._resolve(alert, now)

    def _resolve(self, alert: Alert, now: float) -> None:
        if alert.caused_by:
            self._impact_dirty.add(alert.caused_by)
        if self.book.closing(alert):
            self._lineage_changed = True
        alert.state = RESOLVED
        alert.resolved_at = now
        alert.unhandled_since = None
        runs = alert.clear_runs
        self._emit(
            RESOLVED_EVENT,
            alert,
            now,
            notify=alert.notified,
            reason=f"clear for {runs} run{'s' if runs != 1 else ''}",
        )

    def _raise(self, alert: Alert, severity: int, now: float, reason: str) -> None:
        previous, alert.severity = alert.severity, min(severity, CRITICAL)
        notify = not alert.muted
        if notify:
            alert.notified = True
            alert.last_notified_at = now
            if alert.state == FIRING:
                alert.unhandled_since = now  # the next step's delay counts from here
        self._emit(ESCALATED, alert, now, notify=notify, previous=previous, reason=reason)

    def _announce(self, alert: Alert, now: float) -> None:
        """The FIRED event of a fresh alert, its muting settled."""
        self._fresh.pop(alert.alert_id, None)
        self._update_silenced(alert, now)
        notify = not alert.muted
        if alert.caused_by:
            reason = f"explained by an open alert of upstream {alert.caused_by}"
        elif alert.untrusted_cause:
            reason = self._untrusted_reason(alert)
        elif alert.silenced:
            reason = "silenced"
        else:
            reason = ""
        if notify:
            alert.notified = True
            alert.last_notified_at = now
            alert.unhandled_since = now if alert.state == FIRING else None
        self._emit(FIRED, alert, now, notify=notify, reason=reason)

    def _announce_if_unmuted(self, alert: Alert, now: float, reason: str) -> None:
        """Fire again, notifying, an alert receivers never heard of that is no longer muted."""
        if (
            alert.state == FIRING
            and alert.anomaly_present
            and not alert.notified
            and not alert.muted
            and alert.alert_id not in self._fresh
        ):
            alert.notified = True
            alert.last_notified_at = now
            alert.unhandled_since = now
            self._emit(FIRED, alert, now, notify=True, reason=reason)

    def _update_silenced(self, alert: Alert, now: float) -> None:
        silenced = self.silences.muting(alert, now) is not None
        if silenced != alert.silenced:
            alert.silenced = silenced
            self._dirty[alert.alert_id] = alert

    def _set_unhandled(self, alert: Alert, since: float | None) -> None:
        if alert.unhandled_since != since:
            alert.unhandled_since = since
            self._dirty[alert.alert_id] = alert

    def _forget_resolved(self, now: float) -> None:
        keep = self.settings.resolved_retention_seconds
        for alert in self.book:
            if alert.resolved_at is not None and now - alert.resolved_at >= keep:
                self.book.remove(alert)

    # -- lineage ---------------------------------------------------------------------------------

    def _settle_fresh_causes(self) -> None:
        """The root causes of the alerts about to be announced, judged now, walking up only as
        far as the nearest open alerts already judged."""
        fresh = {a.pipeline_id for a in self._fresh.values()}

        def known(pid: str) -> str | None:
            return None if pid in fresh else self.book.root_of(pid)

        causes = lineage_mod.root_causes(
            self.lineage,
            self.book.open_pipelines(),
            rank=self.book.opened_at,
            known=known,
            of=fresh,
        )
        for alert in list(self._fresh.values()):
            cause = causes.get(alert.pipeline_id, "")
            if alert.is_open and alert.caused_by != cause:
                self._set_cause(alert, cause)
        unexplained = {a.pipeline_id for a in self._fresh.values() if not a.caused_by}
        self._settle_untrusted(unexplained, [a for a in self._fresh.values() if a.is_open])

    def _settle_lineage(self) -> list[Alert]:
        """Judge again the root cause of every open alert, if a pipeline's openness or upstream
        changed since the last time. Returns the alerts whose cause changed."""
        if not self._lineage_changed:
            return []
        self._lineage_changed = False
        causes = lineage_mod.root_causes(
            self.lineage, self.book.open_pipelines(), rank=self.book.opened_at
        )
        changed: list[Alert] = []
        for pid, cause in causes.items():
            for alert in self.book.of_pipeline(pid):
                if alert.is_open and alert.caused_by != cause:
                    self._set_cause(alert, cause)
                    changed.append(alert)
        unexplained = {pid for pid, cause in causes.items() if not cause}
        self._settle_untrusted(unexplained, self.book.open_alerts())
        return changed

    def _settle_untrusted(self, unexplained: set[str], alerts: Iterable[Alert]) -> None:
        """Set the untrusted cause of `alerts`: for those of the `unexplained` pipelines, what
        explains them along every reported edge, trusted or not; for the others, none."""
        likely = (
            lineage_mod.root_causes(
                self.lineage,
                self.book.open_pipelines(),
                rank=self.book.opened_at,
                of=unexplained,
                trusted=False,
            )
            if unexplained
            else {}
        )
        for alert in alerts:
            cause = "" if alert.caused_by else likely.get(alert.pipeline_id, "")
            if alert.untrusted_cause != cause:
                alert.untrusted_cause = cause
                self._changed[alert.alert_id] = alert

    def _untrusted_reason(self, alert: Alert) -> str:
        cause = alert.untrusted_cause
        return (
            f"likely caused by upstream {cause} (team {self.lineage.team_of(cause) or 'unknown'})"
            f", through lineage team {alert.team} does not trust to mute its alerts: notified"
        )

    def _set_cause(self, alert: Alert, cause: str) -> None:
        if alert.caused_by:
            self._impact_dirty.add(alert.caused_by)
        self.book.set_cause(alert, cause)
        if cause:
            self._impact_dirty.add(cause)
            self._set_unhandled(alert, None)
        self._changed[alert.alert_id] = alert

    def _settle_impact(self, now: float) -> None:
        """List what each changed root cause explains, and raise it by its blast radius."""
        roots, self._impact_dirty = self._impact_dirty, set()
        for root in sorted(roots):
            explained = self.book.explained_by(root)
            pipelines = tuple(sorted({a.pipeline_id for a in explained}))
            teams = tuple(sorted({a.team for a in explained}))
            for alert in self.book.of_pipeline(root):
                if not alert.is_open:
                    continue
                if (alert.impacted_pipelines, alert.impacted_teams) != (pipelines, teams):
                    alert.impacted_pipelines, alert.impacted_teams = pipelines, teams
                    self._changed[alert.alert_id] = alert
                others = sum(1 for t in teams if t != alert.team)
                target = blast_severity(self.settings.blast_radius, len(pipelines), others)
                if target > alert.severity:
                    self._raise(
                        alert,
                        target,
                        now,
                        f"explains alerts of {len(pipelines)} downstream pipelines of "
                        f"{len(teams)} team{'s' if len(teams) != 1 else ''}",
                    )

    # -- events and the log ----------------------------------------------------------------------

    def _emit(
        self,
        type_: int,
        alert: Alert,
        now: float,
        *,
        notify: bool,
        previous: int = 0,
        reason: str = "",
    ) -> None:
        if type_ != FIRED and alert.alert_id in self._fresh:
            self._announce(alert, now)  # its FIRED goes first
        self._changed[alert.alert_id] = alert
        self._events.append(AlertEvent(type_, alert.copy(), now, notify, previous, reason))

    def _commit(self) -> int:
        """Log what changed as one record; hand its events to the feed."""
        if not self._changed and not self._events:
            return self.log.last_seq
        for alert_id in self._changed:
            self._dirty.pop(alert_id, None)
        events, self._events = self._events, []
        # An alert superseded by a new episode, or forgotten, is not the state any more.
        kept = [a for a in self._changed.values() if self.book.get(a.alert_id) is a]
        seq = self.log.append(alert_changes(kept, events))
        self._changed = {}
        for event in events:
            self.book.remember(event)
            metrics.ALERT_EVENTS.labels(_EVENT_NAMES[event.type]).inc()
            _log_event(event)
        self.feed.publish(seq, events)
        metrics.ALERTS_OPEN.set(self.book.open_count())
        return seq

    def _new_id(self) -> str:
        while True:
            candidate = "a-" + secrets.token_hex(6)
            if self.book.get(candidate) is None:
                return candidate


_EVENT_NAMES = {
    FIRED: "fired",
    ESCALATED: "escalated",
    ACKNOWLEDGED_EVENT: "acknowledged",
    RESOLVED_EVENT: "resolved",
    REPEATED: "repeated",
}


def _log_event(event: AlertEvent) -> None:
    # People's acknowledgements are worth a line; what detection does is in the history, and
    # an alert storm would flood the log.
    a = event.alert
    log.log(
        logging.INFO if event.type == ACKNOWLEDGED_EVENT else logging.DEBUG,
        "alert %s %s: %s %s %s%s%s",
        a.alert_id,
        _EVENT_NAMES[event.type],
        SEVERITY_NAMES.get(a.severity, a.severity),
        safe(a.fingerprint),
        safe(a.team),
        f" ({safe(event.reason)})" if event.reason else "",
        "" if event.notify else " [not notified]",
    )
