"""A token bucket per rate key (a PagerDuty routing key, a Slack webhook, an SMTP server).

`acquire()` waits for a token; `hold(seconds)` stops the bucket for a while, when a receiver
answered 429 with Retry-After, so that the notifications behind the failed one wait too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; a rate of 0 means no limit."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._held_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def wait_time(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        now = self._clock()
        held = max(self._held_until - now, 0.0)
        if self.rate <= 0:
            return held
        self._refill(now)
        missing = max(1.0 - self._tokens, 0.0)
        return max(held, missing / self.rate)

    async def acquire(self) -> None:
        """Wait for a token and take it. Waiters are served in order."""
        async with self._lock:
            # Sleeps for a computed time, then looks again: a hold may have come meanwhile.
            while (wait := self.wait_time()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            if self.rate > 0:
                self._tokens -= 1.0

    def hold(self, seconds: float) -> None:
        """Give no token for `seconds` from now."""
        self._held_until = max(self._held_until, self._clock() + seconds)
