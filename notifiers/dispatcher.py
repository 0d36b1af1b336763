"""The dispatcher: the notifiers' one entry point. The server calls it for each alert event.

    dispatcher = Dispatcher(config.receivers, config.routes, data_dir=config.server.data_dir)
    await dispatcher.start()          # opens the outbox; what was pending is sent again
    dispatcher.submit(event)          # for each AlertEvent; never waits for the network
    await dispatcher.close(grace=5)   # lets queues drain for up to 5 s, then stops

`submit` routes the event (fired and escalated events by team and severity; acknowledgements and
resolutions to the receivers that were told the alert fired), drops what a receiver was already
told (same severity and state within its repeat interval), writes each notification to the outbox
and hands it to the receiver's worker, all without waiting. `notify=False` (a silenced alert,
one explained by an upstream root cause) sends nothing; a resolution submitted so lets the
receivers' memory of the alert age out.

The server wires it through `server/partition/notifier.py` (AlertNotifier): built by each
`Partition` from `config.receivers` and `config.routes`, with `data_dir=server.data_dir` and
`fsync=server.fsync`; `start()` after recovery and before serving, so that pages pending from
before a crash go out first; `submit(event, notify=...)` from the event loop for every
AlertEvent of the alert feed (it is cheap: tens of microseconds), and `submit(...,
catch_up=True)` for where each alert stands when events may have been missed; `close(grace)`
after the gRPC server has stopped. A start that finds the outbox locked raises LogError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from pipewarden.notifiers import metrics
from pipewarden.notifiers.config import (
    ConsoleReceiver,
    EmailReceiver,
    PagerDutyReceiver,
    Receiver,
    Route,
    SlackReceiver,
    WebhookReceiver,
)
from pipewarden.notifiers.console import ConsoleNotifier
from pipewarden.notifiers.deadletters import DeadLetter, DeadLetters
from pipewarden.notifiers.email import EmailNotifier
from pipewarden.notifiers.errors import DeliveryError
from pipewarden.notifiers.http import HttpClient
from pipewarden.notifiers.nflog import NotificationLog
from pipewarden.notifiers.notification import (
    ACKNOWLEDGED,
    RESOLVED,
    Notification,
    event_name,
    severity_name,
    state_of,
    summary,
    unix_iso,
)
from pipewarden.notifiers.outbox import DEAD, DELIVERED, Outbox
from pipewarden.notifiers.pagerduty import PagerDutyNotifier
from pipewarden.notifiers.ratelimit import TokenBucket
from pipewarden.notifiers.router import Router
from pipewarden.notifiers.slack import SlackNotifier
from pipewarden.notifiers.webhook import WebhookNotifier
from pipewarden.notifiers.worker import Notifier, ReceiverWorker
from pipewarden.server.base import tasks
from pipewarden.server.base.logsafe import safe
from pipewarden.v1 import alert_pb2

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

RESOLVED_STATE = alert_pb2.ALERT_STATE_RESOLVED
RESOLVED_RETENTION_SECONDS = 24 * 3600.0
"""How long the notification log remembers that a receiver was told an alert resolved."""
MAINTENANCE_SECONDS = 1.0


_HTTP_NOTIFIERS = (PagerDutyNotifier, SlackNotifier, WebhookNotifier)
"""The notifiers that post through the shared HTTP client."""


class Dispatcher:
    """Routes alert events to receivers and delivers them through the outbox. See the module
    docstring for the API; `start` before `submit`, `close` at the end."""

    def __init__(
        self,
        receivers: Sequence[Receiver] = (),
        routes: Sequence[Route] = (),
        *,
        data_dir: str | Path,
        fsync: str = "always",
        clock: Callable[[], float] = time.time,
        notifiers: Mapping[str, Notifier] | None = None,
        console: TextIO | None = None,
        rng: random.Random | None = None,
        outbox_segment_bytes: int = 1 << 20,
        outbox_compact_bytes: int = 4 << 20,
        repair: bool = False,
    ) -> None:
        """`data_dir` holds `outbox/`; `fsync` is the outbox log's policy (always, interval,
        off; as `server.fsync`). For tests: `clock` (Unix seconds, for repeat intervals),
        `notifiers` (by receiver name, instead of the real adapters), `console` (the console
        receiver's stream), `rng` (backoff jitter) and the outbox's sizes. `repair` cuts an
        outbox log damaged where a crash cannot have left it (`pipewarden serve --repair`)."""
        self.router = Router(receivers, routes)
        self.outbox = Outbox(
            Path(data_dir) / "outbox",
            fsync=fsync,
            segment_bytes=outbox_segment_bytes,
            compact_bytes=outbox_compact_bytes,
            repair=repair,
        )
        self.dead_letters = DeadLetters(Path(data_dir) / "outbox")
        self.nflog = NotificationLog()
        self.workers: dict[str, ReceiverWorker] = {}
        self._clock = clock
        self._injected = dict(notifiers or {})
        self._console = console
        self._rng = rng or random.Random()
        self._http = HttpClient()
        self._limiters: dict[str, TokenBucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._unsettled = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._closed = False

    # -- the API ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the outbox, start one worker per receiver, and queue again what was pending."""
        if self._started:
            return
        found = await self.outbox.open()
        self.nflog = found.nflog
        notifiers = {r.name: self._notifier(r) for r in self.router.receivers.values()}
        if any(isinstance(n, _HTTP_NOTIFIERS) for n in notifiers.values()):
            await self._http.start()
        for receiver in self.router.receivers.values():
            worker = ReceiverWorker(
                receiver,
                notifiers[receiver.name],
                self._limiter(receiver),
                durable=self.outbox.wait_durable,
                delivered=self._on_delivered,
                dead=self._on_dead,
                rng=self._rng,
            )
            self.workers[receiver.name] = worker
            worker.start()
        self._started = True
        if found.pending:
            log.info(
                "notification outbox: %d notification(s) pending from before the restart; "
                "sending them again",
                len(found.pending),
            )
        for n in found.pending:
            self._hand_over(n)
        metrics.OUTBOX_PENDING.set(self.outbox.pending_count)
        self._maintenance = tasks.spawn(self._maintain(), name="notify-maintenance")

    def submit(
        self, event: alert_pb2.AlertEvent, notify: bool = True, *, catch_up: bool = False
    ) -> list[Notification]:
        """Notify the receivers that should hear of this alert event. Never waits: what it
        returns (the notifications queued, none when routing or dedup sent nothing) is written
        to the outbox and on its way. `notify=False` sends nothing.

        `catch_up=True` says the event restates where an alert stands (after a restart, or when
        the events that brought it there were missed): a receiver already told that severity and
        state is not told again, however long ago that was; the others are."""
        if not self._started or self._closed:
            raise RuntimeError("Dispatcher.submit before start() or after close()")
        alert = event.alert
        if not notify:
            metrics.SUPPRESSED.inc()
            if event.type == RESOLVED:
                # Resolved without telling: nothing is left to tell about it, so its entries
                # may age out of the notification log like those of a told resolution.
                for name in self.nflog.told(alert.alert_id):
                    self.outbox.note(
                        alert.alert_id, name, alert.severity, state_of(event), self._clock()
                    )
                    self.nflog.record(
                        alert.alert_id, name, alert.severity, state_of(event), self._clock()
                    )
            return []
        if event.type in (ACKNOWLEDGED, RESOLVED):
            # Receivers removed from the configuration since they were told are skipped.
            known = self.router.receivers
            names = tuple(n for n in self.nflog.told(alert.alert_id) if n in known)
        else:
            names = self.router.route(alert.team, alert.severity)
            if not names and not catch_up:
                metrics.UNROUTED.inc()
        if not names:
            return []
        copy = alert_pb2.AlertEvent()
        copy.CopyFrom(event)
        now = self._clock()
        state = state_of(copy)
        queued: list[Notification] = []
        for name in names:
            delivery = self.router.receivers[name].delivery
            repeat = math.inf if catch_up else delivery.repeat_interval_seconds
            if not self.nflog.due(alert.alert_id, name, alert.severity, state, now, repeat):
                if not catch_up:  # a restatement is not a duplicate sent again
                    metrics.DEDUPLICATED.labels(name).inc()
                continue
            n = self.outbox.add(os.urandom(16).hex(), name, copy, now)
            self.nflog.record(alert.alert_id, name, alert.severity, state, now)
            self._hand_over(n)
            queued.append(n)
        metrics.OUTBOX_PENDING.set(self.outbox.pending_count)
        return queued

    def unresolved(self) -> set[str]:
        """The alerts some receiver still configured was told of and has not been told
        resolved."""
        known = self.router.receivers
        return {
            alert_id
            for alert_id, name, entry in self.nflog.entries()
            if entry.state != RESOLVED_STATE and name in known
        }

    async def drain(self, within: float) -> bool:
        """Wait until every queued notification is settled (delivered or dead), at most
        `within` seconds; True when it is."""
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, grace: float = 0.0) -> None:
        """Let the queues drain for up to `grace` seconds, then stop the workers; whatever is
        not delivered stays in the outbox for the next start. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._started and grace > 0:
            await self.drain(grace)
        await tasks.stop(self._maintenance)
        for worker in self.workers.values():
            await worker.close()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.close()
        await self.outbox.close()

    @property
    def unsettled(self) -> int:
        """Notifications handed to workers and not yet delivered or dead."""
        return self._unsettled

    # -- internals -------------------------------------------------------------------------------

    def _notifier(self, receiver: Receiver) -> Notifier:
        if receiver.name in self._injected:
            return self._injected[receiver.name]
        if isinstance(receiver, PagerDutyReceiver):
            return PagerDutyNotifier(receiver, self._http)
        if isinstance(receiver, SlackReceiver):
            return SlackNotifier(receiver, self._http)
        if isinstance(receiver, WebhookReceiver):
            return WebhookNotifier(receiver, self._http)
        if isinstance(receiver, EmailReceiver):
            return EmailNotifier(receiver)
        assert isinstance(receiver, ConsoleReceiver)
        return ConsoleNotifier(receiver, self._console)

    def _limiter(self, receiver: Receiver) -> TokenBucket:
        """One bucket per rate key: receivers sharing a routing key or URL share its limit."""
        key = receiver.rate_key
        if key not in self._limiters:
            d = receiver.delivery
            self._limiters[key] = TokenBucket(d.rate_per_second, d.burst)
        return self._limiters[key]

    def _hand_over(self, n: Notification) -> None:
        worker = self.workers.get(n.receiver)
        self._unsettled += 1
        self._idle.clear()
        if worker is None:
            error = DeliveryError(f"receiver {n.receiver} is no longer configured", retriable=False)
        elif worker.offer(n):
            return
        else:
            size = self.router.receivers[n.receiver].delivery.queue_size
            error = DeliveryError(
                f"receiver {n.receiver}: queue full ({size} waiting)", retriable=False
            )
        task = asyncio.create_task(self._on_dead(n, 0, error))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settled(self) -> None:
        self._unsettled -= 1
        if self._unsettled <= 0:
            self._unsettled = 0
            self._idle.set()
        metrics.OUTBOX_PENDING.set(self.outbox.pending_count)

    def _on_delivered(self, n: Notification, attempts: int) -> None:
        self.outbox.settle(n, DELIVERED)
        metrics.SENT.labels(n.receiver).inc()
        metrics.DELIVERY_SECONDS.labels(n.receiver).observe(max(self._clock() - n.created, 0.0))
        self._settled()

    async def _on_dead(self, n: Notification, attempts: int, error: DeliveryError) -> None:
        """Record the dead letter (file, metric, log), then settle it. The receiver was not
        told, so the notification log forgets it: the next submit of the alert tries again."""
        receiver = self.router.receivers.get(n.receiver)
        a = n.alert
        letter = DeadLetter(
            time=unix_iso(time.time()),
            notification_id=n.notification_id,
            receiver=n.receiver,
            receiver_type=receiver.type if receiver is not None else "",
            event=event_name(n.event.type),
            alert_id=a.alert_id,
            pipeline_id=a.pipeline_id,
            team=a.team,
            severity=severity_name(a.severity),
            summary=summary(n.event, 300),
            attempts=attempts,
            error=str(error),
            status=error.status,
            response=error.body[:500],
            submitted=unix_iso(n.created),
        )
        log.error(
            "dead letter: %s for receiver %s after %d attempt(s): %s%s",
            safe(letter.summary),
            n.receiver,
            attempts,
            safe(str(error)),
            f" (answer: {safe(error.body.strip())})" if error.body else "",
        )
        metrics.DEAD_LETTERS.labels(n.receiver).inc()
        try:
            await self.dead_letters.add(letter)
        except OSError as e:
            log.error("cannot write the dead letter to %s: %s", self.dead_letters.path, e)
        self.outbox.settle(n, DEAD)
        self.outbox.untell(self.nflog, n)
        self._settled()

    async def _maintain(self) -> None:
        """Prune the notification log and compact the outbox when it has grown."""
        while True:
            await asyncio.sleep(MAINTENANCE_SECONDS)
            self.nflog.prune(self._clock(), RESOLVED_RETENTION_SECONDS)
            if self.outbox.compaction_due():
                try:
                    dropped = await self.outbox.compact(self.nflog)
                except Exception as e:  # a failed compaction must not stop the notifying
                    log.error("notification outbox compaction failed: %s", e)
                else:
                    log.debug("notification outbox compacted: %d segment(s) deleted", dropped)
