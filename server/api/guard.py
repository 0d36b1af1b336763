"""Who may call, how often, and how many streams at once: the checks every method passes first.

Each method handler is wrapped (`unary`, `streaming`): the caller is authenticated from the
call's metadata and held to its token's rate; a stream also takes a place under the caps on
streams (in all, per caller, per team, with room kept for ingest). Then `scope` and
`may_ingest` check what an authenticated caller may read and write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from pipewarden.server.api.auth import ANONYMOUS, Authenticator, Principal, audit
from pipewarden.server.api.calls import Context, retry_later
from pipewarden.server.api.limits import RateLimiter, StreamGate

__all__ = ["Guard", "Streaming", "Unary", "own"]

Unary = Callable[[bytes, Context, Principal], Awaitable[Any]]
"""A unary method, given the request's bytes and the admitted caller."""
Streaming = Callable[[Any, Context, Principal], AsyncIterator[Any]]
"""A streaming method, given the request (or its iterator) and the admitted caller."""


class Guard:
    """Authentication, rate limits and the caps on streams."""

    def __init__(self, auth: Authenticator, rates: RateLimiter, streams: StreamGate) -> None:
        self.auth = auth
        self.rates = rates
        self.streams = streams

    async def admit(self, context: Context, method: str) -> Principal:
        """The caller, once authenticated and within its rate; otherwise the call is ended."""
        if not self.auth.enabled and not self.rates.enabled:
            return ANONYMOUS
        who = self.auth.from_metadata(context.invocation_metadata())
        if isinstance(who, str):
            audit.warning(
                "authentication refused: %s; peer=%s method=%s",
                who,
                context.peer(),
                method,
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, who)
        assert isinstance(who, Principal)
        wait = self.rates.take(who.key)
        if wait:
            await retry_later(
                context,
                f"rate limit of {self.rates.rate:g} requests a second exceeded for this token: "
                f"retry in {wait:.2f}s",
                wait,
            )
        return who

    def unary(self, fn: Unary, method: str) -> Callable[[bytes, Context], Awaitable[Any]]:
        """`fn` behind admission."""

        async def handle(raw: bytes, context: Context) -> Any:
            return await fn(raw, context, await self.admit(context, method))

        return handle

    def streaming(self, fn: Streaming, method: str) -> Callable[[Any, Context], AsyncIterator[Any]]:
        """`fn` behind admission and the caps on streams."""

        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            who = await self.admit(context, method)
            ingest = method == "StreamIngest"
            if ingest:
                await self.may_ingest(who, context)  # before a reader takes a place
            # Without auth every caller is the same principal: each connection is a caller.
            caller = who.key if self.auth.enabled else context.peer()
            refusal = self.streams.enter(caller, who.team, ingest=ingest)
            if refusal:
                await retry_later(context, refusal, 1.0)
            try:
                async for item in fn(request, context, who):
                    yield item
            finally:
                self.streams.leave(caller, who.team)

        return handle

    async def throttle(self, key: str) -> None:
        """Wait until `key`'s bucket allows a request (a bounded number of tries, since
        other calls of the same token may take what was waited for)."""
        for _ in range(1000):
            wait = self.rates.take(key)
            if not wait:
                return
            await asyncio.sleep(wait)

    async def scope(self, team: str, who: Principal, context: Context) -> str:
        """The team filter a read runs with; another team's is refused."""
        scoped = who.scope(team)
        if scoped is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token reads team {who.team!r} only, not {team!r}",
            )
        return scoped or ""

    async def may_ingest(self, who: Principal, context: Context) -> None:
        """End the call unless `who` may ingest."""
        if who.role == "reader":
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "a reader token cannot ingest: use a writer's"
            )


def own(who: Principal) -> str | None:
    """The only team a principal may ingest for, or None for any."""
    return None if who.admin else who.team
