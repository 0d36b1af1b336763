"""Load limits: per-caller token buckets and a cap on open streams.

Pure bookkeeping, no waiting: the servicer asks and refuses with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimiter", "StreamGate"]

_MAX_BUCKETS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: `rate` tokens a second, at most `burst` saved up."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        """Whether any limit applies (a rate of 0 turns it off)."""
        return self.rate > 0

    def take(self, key: str, cost: float = 1.0) -> float:
        """Spend `cost` from `key`'s bucket: 0.0 when allowed, else the seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                # Keys are configured tokens, so this takes a misuse; forget the full buckets.
                self._buckets = {k: v for k, v in self._buckets.items() if v.tokens < self.burst}
            b = self._buckets[key] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens >= cost:
            b.tokens -= cost
            return 0.0
        return (cost - b.tokens) / self.rate


class StreamGate:
    """Counts open streams; `enter` refuses beyond `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def enter(self) -> bool:
        """Take a place, or return False when all are taken."""
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        """Give a place back."""
        self.open -= 1
