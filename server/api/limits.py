"""Load limits: per-caller token buckets and a cap on open streams.

Pure bookkeeping, no waiting: the servicer asks and refuses with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pipewarden.server.base.ratelimit import TokenBucket

__all__ = ["RateLimiter", "StreamGate"]

_MAX_BUCKETS = 100_000


class RateLimiter:
    """A token bucket per key: `rate` tokens a second, at most `burst` saved up."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        """Whether any limit applies (a rate of 0 turns it off)."""
        return self.rate > 0

    def take(self, key: str, cost: float = 1.0) -> float:
        """Spend `cost` from `key`'s bucket: 0.0 when allowed, else the seconds to wait."""
        if not self.enabled:
            return 0.0
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                # Keys are configured tokens, so this takes a misuse; forget the full buckets.
                self._buckets = {k: v for k, v in self._buckets.items() if v.tokens < self.burst}
            b = self._buckets[key] = TokenBucket(self.rate, int(self.burst), self.clock)
        return b.take(cost)


class StreamGate:
    """Counts open streams, and refuses one beyond any of its limits: all streams together;
    those of one caller (a token, or a connection when there is no auth); those of one team;
    and, for streams that do not ingest (WatchAlerts), all but the last `ingest_reserve`
    places, so that readers can never take the places writers need. A limit of 0 is no limit."""

    def __init__(
        self, limit: int, *, per_caller: int = 0, per_team: int = 0, ingest_reserve: int = 0
    ) -> None:
        self.limit = limit
        self.per_caller = per_caller
        self.per_team = per_team
        # At most half: a small max_streams still leaves watchers room.
        self.ingest_reserve = min(ingest_reserve, limit // 2)
        self.open = 0
        self._callers: dict[str, int] = {}
        self._teams: dict[str, int] = {}

    def enter(self, caller: str = "", team: str | None = None, *, ingest: bool = True) -> str:
        """Take a place for a stream of `caller` (of `team`, None for none); "" when taken,
        otherwise why it was refused, naming the limit's configuration key."""
        if self.limit and self.open >= self.limit:
            return (
                f"the server has {self.open} streams open, its limit (server.max_streams): "
                "retry later"
            )
        if not ingest and self.limit and self.open >= self.limit - self.ingest_reserve:
            return (
                f"the server has {self.open} streams open and keeps the last "
                f"{self.ingest_reserve} places for StreamIngest (server.ingest_stream_reserve): "
                "retry later"
            )
        mine = self._callers.get(caller, 0)
        if self.per_caller and mine >= self.per_caller:
            return (
                f"this caller has {mine} streams open, the limit per token "
                "(server.max_streams_per_caller): close one first"
            )
        ours = self._teams.get(team, 0) if team is not None else 0
        if team is not None and self.per_team and ours >= self.per_team:
            return (
                f"team {team!r} has {ours} streams open, the limit per team "
                "(server.max_streams_per_team): close one first"
            )
        self.open += 1
        self._callers[caller] = mine + 1
        if team is not None:
            self._teams[team] = ours + 1
        return ""

    def leave(self, caller: str = "", team: str | None = None) -> None:
        """Give back a place `enter` took for the same caller and team."""
        self.open -= 1
        _drop(self._callers, caller)
        if team is not None:
            _drop(self._teams, team)


def _drop(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]  # so that callers come and go without the map growing
