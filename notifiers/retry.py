"""When to try again: exponential backoff with jitter, and at least what Retry-After asked."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Waits of initial, 2·initial, 4·initial ... capped at `maximum`, each drawn uniformly from
    its upper half ("equal jitter"), so that many workers failing together do not retry in step
    yet each waits at least half its step."""

    initial: float
    """Wait after the first failed attempt (before jitter)."""
    maximum: float
    """Longest wait (before jitter); Retry-After may ask for more and gets it."""
    rng: random.Random = field(default_factory=random.Random)
    """Source of jitter (seeded in tests)."""

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1 for the first)."""
        step = min(self.maximum, self.initial * 2.0 ** max(failures - 1, 0))
        wait = step / 2 + self.rng.uniform(0, step / 2)
        return max(wait, retry_after or 0.0)
