"""A token bucket per rate key (a PagerDuty routing key, a Slack webhook, an SMTP server).

The bucket is the server's (`pipewarden.server.base.ratelimit`); here it learns to wait:
`acquire()` waits for a token; `hold(seconds)` stops the bucket for a while, when a receiver
answered 429 with Retry-After, so that the notifications behind the failed one wait too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pipewarden.server.base import ratelimit

__all__ = ["TokenBucket"]


class TokenBucket(ratelimit.TokenBucket):
    """`rate` tokens a second, at most `burst` saved up; a rate of 0 means no limit. Waiters
    are served in order."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(rate, burst, clock)
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for a token and take it. Waiters are served in order."""
        async with self._lock:
            # Sleeps for a computed time, then looks again: a hold may have come meanwhile.
            while (wait := self.take()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
