"""One receiver's worker: its own bounded queue, rate limit, timeout and retries.

The worker owns one task that takes notifications in order (so a resolve never overtakes its
trigger), waits until each is durable in the outbox, then tries it: a token from the rate
limiter, one attempt within the receiver's timeout, and on a retriable failure a backoff with
jitter (at least what Retry-After asked, which also holds back the rest of the queue). A
final failure, or the last attempt, makes a dead letter. A slow or dead receiver only ever
holds up its own queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

from pipewarden.notifiers import metrics
from pipewarden.notifiers.config import Receiver
from pipewarden.notifiers.errors import DeliveryError
from pipewarden.notifiers.notification import Notification, summary
from pipewarden.notifiers.ratelimit import TokenBucket
from pipewarden.notifiers.retry import Backoff
from pipewarden.server.base import tasks
from pipewarden.server.base.logsafe import safe

__all__ = ["Notifier", "ReceiverWorker"]

log = logging.getLogger(__name__)


class Notifier(Protocol):
    """Delivers one notification to one receiver, or raises DeliveryError."""

    async def send(self, n: Notification) -> None:
        """Return once the receiver has accepted the notification."""
        ...


class ReceiverWorker:
    """Delivers one receiver's notifications, one at a time, in order."""

    def __init__(
        self,
        receiver: Receiver,
        notifier: Notifier,
        limiter: TokenBucket,
        *,
        durable: Callable[[Notification], Awaitable[None]],
        delivered: Callable[[Notification, int], None],
        dead: Callable[[Notification, int, DeliveryError], Awaitable[None]],
        rng: random.Random | None = None,
    ) -> None:
        self.receiver = receiver
        self.notifier = notifier
        self.limiter = limiter
        self.queue: asyncio.Queue[Notification] = asyncio.Queue(receiver.delivery.queue_size)
        self.backoff = Backoff(
            receiver.delivery.retry_initial_seconds,
            receiver.delivery.retry_max_seconds,
            rng or random.Random(),
        )
        self._durable = durable
        self._delivered = delivered
        self._dead = dead
        self._task: asyncio.Task[None] | None = None
        self._last_error = ""
        self._depth = metrics.QUEUE_DEPTH.labels(receiver.name)

    @property
    def name(self) -> str:
        """The receiver's name."""
        return self.receiver.name

    def offer(self, n: Notification) -> bool:
        """Queue a notification without waiting; False when the queue is full."""
        try:
            self.queue.put_nowait(n)
        except asyncio.QueueFull:
            return False
        self._depth.set(self.queue.qsize())
        return True

    def start(self) -> None:
        """Start the task."""
        if self._task is None:
            self._task = tasks.spawn(self._run(), name=f"notify-{self.name}")

    async def close(self) -> None:
        """Stop, abandoning the attempt in progress (it stays pending in the outbox and is sent
        after the next start). Idempotent."""
        task, self._task = self._task, None
        await tasks.stop(task)

    async def _run(self) -> None:
        while True:
            n = await self.queue.get()
            self._depth.set(self.queue.qsize())
            await self._deliver(n)

    async def _deliver(self, n: Notification) -> None:
        await self._durable(n)
        delivery = self.receiver.delivery
        failures = 0
        while True:
            await self.limiter.acquire()
            try:
                async with asyncio.timeout(delivery.timeout_seconds):
                    await self.notifier.send(n)
            except DeliveryError as e:
                error = e
            except TimeoutError:
                error = DeliveryError(
                    f"{self.receiver.type} receiver {self.name}: no answer within "
                    f"{delivery.timeout_seconds:g}s",
                    retriable=True,
                )
            except Exception as e:
                # A bug in an adapter: make it a dead letter people can see, keep the worker.
                log.exception("receiver %s: unexpected error", self.name)
                error = DeliveryError(f"unexpected {type(e).__name__}: {e}", retriable=False)
            else:
                if self._last_error:
                    log.info("receiver %s accepts notifications again", self.name)
                    self._last_error = ""
                self._delivered(n, failures + 1)
                return
            failures += 1
            metrics.ATTEMPTS_FAILED.labels(self.name, str(error.retriable).lower()).inc()
            last = not error.retriable or failures >= delivery.max_attempts
            self._log_failure(n, error, failures, last)
            if last:
                await self._dead(n, failures, error)
                return
            if error.retry_after:
                self.limiter.hold(error.retry_after)
            await asyncio.sleep(self.backoff.delay(failures, error.retry_after))

    def _log_failure(
        self, n: Notification, error: DeliveryError, failures: int, last: bool
    ) -> None:
        """Log when the error changes, not on every retry of the same one."""
        text = str(error)
        if last:
            return  # the dead letter is logged by whoever records it
        if text != self._last_error:
            retry = "will retry" if error.retriable else "will not retry"
            log.warning(
                "%s (attempt %d of %d for %s; %s)",
                safe(text),
                failures,
                self.receiver.delivery.max_attempts,
                safe(summary(n.event, 120)),
                retry,
            )
            self._last_error = text
        else:
            log.debug("%s (attempt %d)", safe(text), failures)
