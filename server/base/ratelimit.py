"""The token bucket, once: `rate` tokens a second, at most `burst` saved up.

Pure bookkeeping on an injected clock, no waiting: the API's per-caller limits ask it and
refuse, the notifiers' workers wait for it (`pipewarden.notifiers.ratelimit`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up (it starts full); a rate of 0 or less
    means no limit. `hold(seconds)` gives no token for a while, whatever the rate."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self.clock = clock
        self.tokens = self.burst
        """Saved up at the last refill (`refill` brings it up to date)."""
        self._stamp = clock()
        self._held_until = 0.0

    def refill(self, now: float | None = None) -> None:
        """Add what has dripped in since the last refill."""
        now = self.clock() if now is None else now
        if now > self._stamp:
            self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def wait_time(self, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there to take (0.0 when they are now)."""
        now = self.clock()
        held = max(self._held_until - now, 0.0)
        if self.rate <= 0:
            return held
        self.refill(now)
        return max(held, max(cost - self.tokens, 0.0) / self.rate)

    def take(self, cost: float = 1.0) -> float:
        """Spend `cost` tokens if they are there: 0.0 when spent, else the seconds to wait
        (and nothing spent)."""
        wait = self.wait_time(cost)
        if wait > 0:
            return wait
        if self.rate > 0:
            self.tokens -= cost
        return 0.0

    def hold(self, seconds: float) -> None:
        """Give no token for `seconds` from now."""
        self._held_until = max(self._held_until, self.clock() + seconds)
