"""The in-process stream of alert events: what WatchAlerts streams and notifiers consume.

An event is published only once the log record that made it is durable, so a restart never
emits again what a subscriber already saw (the record is there, and replay emits nothing), and
nothing is emitted that a crash could take back.

    subscription = feed.subscribe(team="payments", min_severity=HIGH, maxsize=1000)
    async for event in subscription:      # AlertEvent, in the order they happened
        ...
    # raises FeedOverflow if the subscriber fell `maxsize` events behind; then subscribe again
    subscription.close()

A subscriber never slows anyone else: its queue is bounded (maxsize=0 makes it unbounded, for
in-process consumers that must see everything and keep up), and one that overflows is ended.

A subscriber that catches up from the current alerts (after an overflow, say) subscribes with
`after=log.last_seq`, taken at the same moment as the alerts it reads: events of older records
still waiting to be durable are then left out of its queue, so none of them arrives after the
newer state it caught up with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from pipewarden.server.alerting.model import AlertEvent
from pipewarden.server.base import tasks
from pipewarden.server.base.errors import LogError, PipewardenError
from pipewarden.server.storage.eventlog import EventLog

__all__ = ["AlertFeed", "FeedOverflow", "Subscription"]

log = logging.getLogger(__name__)


class FeedOverflow(PipewardenError):
    """A subscriber fell too far behind and was ended; it should subscribe again (and read the
    current alerts to catch up)."""

    retriable = True


class Subscription:
    """One subscriber's filtered, bounded queue of events. Iterate it asynchronously."""

    def __init__(
        self, feed: AlertFeed, team: str, min_severity: int, maxsize: int, after: int = 0
    ) -> None:
        self.team = team
        """Only this team's alerts; empty for every team."""
        self.min_severity = min_severity
        """Only alerts at least this severe."""
        self.maxsize = maxsize
        """Events it may fall behind by; 0 for no bound."""
        self.after = after
        """Only the events of log records after this one."""
        self.overflowed = False
        """Whether it was ended for falling behind."""
        self.closed = False
        """Whether it has ended (closed, overflowed, or the feed closed)."""
        self._feed = feed
        self._items: deque[AlertEvent] = deque()
        self._wake = asyncio.Event()

    def wants(self, event: AlertEvent) -> bool:
        """Whether `event` passes the filters."""
        a = event.alert
        return (not self.team or a.team == self.team) and a.severity >= self.min_severity

    def offer(self, event: AlertEvent) -> None:
        """Queue `event` if wanted; end the subscription when the queue is full."""
        if self.closed or not self.wants(event):
            return
        if self.maxsize and len(self._items) >= self.maxsize:
            self.overflowed = True
            self.close()
            return
        self._items.append(event)
        self._wake.set()

    async def get(self) -> AlertEvent:
        """The next event. Raises FeedOverflow when it fell behind, StopAsyncIteration when it
        was closed."""
        while True:
            if self.overflowed:
                raise FeedOverflow(f"fell more than {self.maxsize} events behind; subscribe again")
            if self._items:
                return self._items.popleft()
            if self.closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> AlertEvent:
        return await self.get()

    def pending(self) -> int:
        """Events queued and not yet taken."""
        return len(self._items)

    def close(self) -> None:
        """Stop receiving events; a waiting `get` ends. Idempotent."""
        if not self.closed:
            self.closed = True
            self._feed._remove(self)
            self._wake.set()


class AlertFeed:
    """Fans out alert events to subscribers once the log says their records are durable."""

    def __init__(self, event_log: EventLog) -> None:
        self.log = event_log
        self._subscribers: list[Subscription] = []
        self._pending: deque[tuple[int, list[AlertEvent]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def subscribe(
        self, team: str = "", min_severity: int = 0, maxsize: int = 1000, after: int = 0
    ) -> Subscription:
        """A new subscription to the events from now on, filtered by team and severity; with
        `after`, only to those of log records after that one (see the module docstring)."""
        sub = Subscription(self, team, min_severity, maxsize, after)
        if self._closed:
            sub.close()
        else:
            self._subscribers.append(sub)
        return sub

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)

    def publish(self, seq: int, events: list[AlertEvent]) -> None:
        """Hand `events`, made by log record `seq`, to the subscribers once it is durable."""
        if events and not self._closed:
            self._pending.append((seq, events))
            self._wake.set()

    def pending(self) -> list[AlertEvent]:
        """The events published and not yet handed to subscribers (their records are not yet
        durable, or the feed has not started), oldest first."""
        return [event for _, events in self._pending for event in events]

    def start(self) -> None:
        """Start delivering."""
        if self._task is None and not self._closed:
            self._task = tasks.spawn(self._deliver(), name="alert-feed")

    async def _deliver(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                seq, events = self._pending.popleft()
                try:
                    await self.log.wait_durable(seq)
                except LogError as e:
                    log.error("alert events not delivered: the log failed: %s", e)
                    self.close_subscriptions()
                    return
                for event in events:
                    for sub in list(self._subscribers):
                        if seq > sub.after:
                            sub.offer(event)

    def close_subscriptions(self) -> None:
        """End every subscription (their streams finish) and refuse new ones."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.close()

    async def close(self) -> None:
        """Stop delivering and end every subscription. Idempotent."""
        self.close_subscriptions()
        task, self._task = self._task, None
        await tasks.stop(task)

    def _remove(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(sub)
