"""From alerts to notifications: the alert feed's events handed to the notifiers' Dispatcher, with
nothing missed across a crash, a stop, or a subscription that fell behind.

The feed publishes an event once its log record is durable, and at most once: an event published
while the process dies, or dropped because its subscriber fell behind, is never seen again. So
the AlertNotifier does not count on seeing every event. Besides passing on the events it sees,
it **catches up** from where each alert stands (the alert manager's state, which the log keeps)
and lets the dispatcher's notification log (kept in the outbox, durable with each notification)
decide which receiver is missing what:

- at start, after recovery and before serving: what the feed published but the notifiers never
  took in before a crash (or before a stop);
- when its subscription overflows: what was dropped;
- at stop, after the gRPC server has stopped: what the closed feed did not deliver.

A catch-up restates (`catch_up_events`) every firing alert receivers were told of and that is
not muted, and every acknowledged or resolved alert some receiver was told of and not yet told
resolved, including one the alert book no longer holds (a new episode of the problem replaced
it), from its RESOLVED event in the history. The dispatcher sends each to the receivers whose
last notification of the alert had another severity or state, or who were never told of it and
are routed to it now; repeat intervals play no part, so a catch-up never tells a receiver again
what it was told. Together with the outbox (a notification is durable before its first attempt
and is sent again after a restart until settled), a crash at any point loses no page, and sends
again only a notification that was in flight (at least once; PagerDuty's dedup_key makes it
harmless).

Ordering: a catch-up reads the alerts and subscribes anew (`after` the log's last record) in one
step, so no older event can arrive after the newer state it sent; and it waits until that
record is durable before sending, so it tells nothing a crash could take back. (A change of a
detection pass still in progress may be read a few milliseconds before its record is written; a
crash just then could make a restart tell the previous state again.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable

from pipewarden.notifiers import metrics
from pipewarden.notifiers.dispatcher import Dispatcher
from pipewarden.server.alerting.convert import event_message
from pipewarden.server.alerting.feed import AlertFeed, FeedOverflow, Subscription
from pipewarden.server.alerting.manager import AlertManager
from pipewarden.server.alerting.model import (
    ACKNOWLEDGED,
    ACKNOWLEDGED_EVENT,
    FIRED,
    FIRING,
    RESOLVED,
    RESOLVED_EVENT,
    Alert,
    AlertEvent,
)
from pipewarden.server.base import failpoints, tasks
from pipewarden.server.base.errors import LogError
from pipewarden.server.storage.eventlog import EventLog

__all__ = ["FEED_QUEUE_SIZE", "AlertNotifier", "catch_up_events"]

log = logging.getLogger(__name__)

FEED_QUEUE_SIZE = 10_000
"""Alert events the notifiers' subscription may fall behind by. Handing an event over takes tens
of microseconds, so only a detection pass that changes more alerts than this at once overflows
it; a catch-up then makes up for what was dropped."""

_STATE_EVENT = {FIRING: FIRED, ACKNOWLEDGED: ACKNOWLEDGED_EVENT, RESOLVED: RESOLVED_EVENT}


def catch_up_events(
    alerts: Iterable[Alert],
    history: Iterable[AlertEvent],
    unresolved: Collection[str],
    now: float,
) -> list[AlertEvent]:
    """The events that restate where each alert receivers may have to hear of stands. Pure.

    `alerts` are the alert book's, `history` its events oldest first, `unresolved` the alerts
    some receiver was told of and not told resolved (the dispatcher's notification log). Each
    event carries the alert as it is now; its type, time and reason are those of the alert's
    latest event when that left the alert at this state and severity, else the state's own
    (FIRED, ACKNOWLEDGED, RESOLVED) at `now`."""
    latest: dict[str, AlertEvent] = {}
    for event in history:
        latest[event.alert.alert_id] = event
    out: list[AlertEvent] = []
    known: set[str] = set()
    for alert in alerts:
        known.add(alert.alert_id)
        if alert.state == FIRING:
            # Receivers hear of a firing alert once the manager says so, and not while muted.
            wanted = alert.notified and not alert.muted
        else:
            # Acknowledgements and resolutions go only to receivers told it fired.
            wanted = alert.alert_id in unresolved
        if wanted:
            out.append(_restated(alert, latest.get(alert.alert_id), now))
    for alert_id in sorted(set(unresolved) - known):
        # Told of, and no longer in the book: it resolved, then a new episode replaced it or
        # it was forgotten. Its RESOLVED event is in the history unless that moved on too.
        resolved = latest.get(alert_id)
        if resolved is not None and resolved.type == RESOLVED_EVENT:
            out.append(_restated(resolved.alert, resolved, now))
        else:
            log.warning(
                "alert %s was notified and is no longer known; its resolution cannot be sent",
                alert_id,
            )
    return out


def _restated(alert: Alert, last: AlertEvent | None, now: float) -> AlertEvent:
    if last is not None and (last.alert.state, last.alert.severity) == (
        alert.state,
        alert.severity,
    ):
        return AlertEvent(
            last.type, alert.copy(), last.time, True, last.previous_severity, last.reason
        )
    return AlertEvent(_STATE_EVENT[alert.state], alert.copy(), now, True)


class AlertNotifier:
    """Feeds the dispatcher from the alert feed, and catches up from the alerts' state at start,
    at stop and after an overflow. `start` after recovery, `close` after the gRPC server."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        feed: AlertFeed,
        alerts: AlertManager,
        event_log: EventLog,
        *,
        queue_size: int = FEED_QUEUE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dispatcher = dispatcher
        self.feed = feed
        self.alerts = alerts
        self.log = event_log
        self.queue_size = queue_size
        """The subscription's bound (see FEED_QUEUE_SIZE)."""
        self._clock = clock
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Start the dispatcher (it queues again what its outbox held), subscribe to the feed
        and catch up with the recovered alerts. Before the feed starts delivering."""
        await self.dispatcher.start()
        self._started = True
        receivers = self.dispatcher.router.receivers.values()
        log.info(
            "notifying %s",
            ", ".join(f"{r.name} ({r.type})" for r in receivers),
        )
        await self._catch_up("start")
        self._task = tasks.spawn(self._run(), name="notify-alerts")

    async def close(self, grace: float = 0.0) -> None:
        """Catch up with what the closed feed did not deliver, then let the dispatcher's queues
        drain for up to `grace` seconds and stop it. After the gRPC server and the feed have
        stopped, before the log closes. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        await tasks.stop(task)
        if self._subscription is not None:
            self._subscription.close()
        if self._started:
            try:
                await self._catch_up("stop", subscribe=False)
            except LogError as e:
                log.error("notifications not caught up at stop: the log failed: %s", e)
        await self.dispatcher.close(grace)

    async def _run(self) -> None:
        while True:
            subscription = self._subscription
            assert subscription is not None
            try:
                async for event in subscription:
                    self._submit(event)
                return  # the feed closed
            except FeedOverflow:
                log.warning(
                    "the notifiers fell more than %d alert events behind; catching up from the "
                    "alerts' state",
                    subscription.maxsize,
                )
            try:
                await self._catch_up("overflow")
            except LogError as e:
                log.error("notifications stopped: the log failed: %s", e)
                return

    def _submit(self, event: AlertEvent) -> None:
        failpoints.hit("notify-before-submit")
        try:
            self.dispatcher.submit(event_message(event), event.notify)
        except Exception:
            # A bug must not end the notifying: the next catch-up makes up for this event.
            log.exception("alert %s: event not handed to the notifiers", event.alert.alert_id)

    async def _catch_up(self, reason: str, *, subscribe: bool = True) -> None:
        """Send receivers what they missed of where the alerts stand. The state is read and the
        new subscription made without yielding in between (see the module docstring)."""
        seq = self.log.last_seq
        if subscribe:
            self._subscription = self.feed.subscribe(maxsize=self.queue_size, after=seq)
        book = self.alerts.book
        events = catch_up_events(
            book, book.all_events(), self.dispatcher.unresolved(), self._clock()
        )
        await self.log.wait_durable(seq)
        queued = 0
        for event in events:
            queued += len(self.dispatcher.submit(event_message(event), True, catch_up=True))
        metrics.CATCH_UPS.labels(reason).inc()
        metrics.CAUGHT_UP.labels(reason).inc(queued)
        if queued:
            log.info(
                "notifications caught up at %s: %d that receivers had missed (%d alerts checked)",
                reason,
                queued,
                len(events),
            )
