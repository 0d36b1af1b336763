"""The HTTP port: /healthz, /readyz, /metrics (Prometheus text format), and the routes other
parts add (POST /api/v1/lineage, see server/openlineage/endpoint.py)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from pipewarden.server.api.auth import ANONYMOUS, Authenticator, Principal, audit
from pipewarden.server.base.logsafe import safe

__all__ = [
    "ADMIN_PATHS",
    "OPEN_PATHS",
    "PRINCIPAL",
    "BodyBudget",
    "ConnectionCap",
    "HttpServer",
    "http_middleware",
]


class HttpServer:
    """A small aiohttp server; `ready` says whether recovery has finished."""

    def __init__(
        self,
        host: str,
        port: int,
        ready: Callable[[], bool],
        *,
        registry: CollectorRegistry = REGISTRY,
        routes: Sequence[Callable[[web.Application], None]] = (),
        max_body_bytes: int = 1024**2,
        auth: Authenticator | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 1000,
        idle_timeout: float = 10.0,
        body_timeout: float = 30.0,
        body_buffer_bytes: int = 64 * 1024**2,
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self.registry = registry
        """What /metrics shows: the node's registry (see server/api/collector.py)."""
        self._routes = routes
        self._max_body_bytes = max_body_bytes
        self._auth = auth if auth is not None else Authenticator(())
        self._ssl = ssl_context
        self.connections = ConnectionCap(max_connections)
        """The connections open now, and the cap on them."""
        self._idle_timeout = idle_timeout
        self.bodies = BodyBudget(
            max(body_buffer_bytes, max_body_bytes), body_timeout, max_body_bytes
        )
        """The request bodies being read now, and the bounds on them."""
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen. After it, `port` is the bound port (useful when asked for port 0)."""
        app = web.Application(
            client_max_size=self._max_body_bytes,
            middlewares=[http_middleware(self._auth), self.bodies.middleware()],
        )
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        for add_routes in self._routes:
            add_routes(app)
        # keepalive_timeout runs from a connection's opening and from each answer: a connection
        # that has not sent a whole request's headers by then is closed (slow or idle). An
        # unread body is drained for a second at most before the connection is closed.
        self._runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=self._idle_timeout, lingering_time=1.0
        )
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: self.connections.admit(handlers),
            self.host,
            self.port,
            ssl=self._ssl,
            reuse_address=True,
        )
        for sock in self._listener.sockets:
            self.port = int(sock.getsockname()[1])
            break

    async def close(self) -> None:
        """Stop listening. Idempotent."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="recovering\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""HTTP paths served without a token: orchestrators probe them, and they say nothing of data."""
ADMIN_PATHS = frozenset({"/metrics"})
"""HTTP paths for admin tokens only: they show every team's figures."""
PRINCIPAL = web.RequestKey("principal", Principal)
"""Where the HTTP middleware leaves the caller, for handlers that check teams."""


def http_middleware(auth: Authenticator) -> Any:  # an aiohttp middleware
    """An aiohttp middleware: every path but OPEN_PATHS needs a known token (401), ADMIN_PATHS
    an admin's (403). The principal is left in `request[PRINCIPAL]` for handlers to check
    teams."""

    @web.middleware
    async def check(request: web.Request, handler: Any) -> Any:
        if request.path in OPEN_PATHS or not auth.enabled:
            request[PRINCIPAL] = ANONYMOUS
            return await handler(request)
        who = auth.authenticate(request.headers.get("Authorization"))
        if isinstance(who, str):
            audit.warning(
                "authentication refused: %s; peer=%s path=%s",
                who,
                request.remote,
                safe(request.path),
            )
            return web.Response(status=401, text=f"{who}\n", headers={"WWW-Authenticate": "Bearer"})
        if request.path in ADMIN_PATHS and not who.admin:
            return web.Response(status=403, text=f"{request.path} takes an admin token\n")
        request[PRINCIPAL] = who
        return await handler(request)

    return check


class ConnectionCap:
    """Counts the HTTP port's connections; beyond `limit` a new one is answered 503 and
    closed at once, so that it holds its descriptor for no longer than that."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def admit(self, handlers: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
        """The protocol for a new connection: aiohttp's, counted, or a refusal."""
        if self.open >= self.limit:
            return _Refusal(self.limit)
        self.open += 1
        return _Counted(handlers(), self._lost)

    def _lost(self) -> None:
        self.open -= 1


class _Refusal(asyncio.Protocol):
    def __init__(self, limit: int) -> None:
        text = f"the server has {limit} HTTP connections open, its limit "
        body = (text + "(server.max_http_connections): retry later\n").encode()
        self._answer = (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Retry-After: 1\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._answer)
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, and a call when the connection is gone."""

    def __init__(self, inner: asyncio.Protocol, lost: Callable[[], None]) -> None:
        self._inner = inner
        self._lost: Callable[[], None] | None = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        lost, self._lost = self._lost, None
        if lost is not None:
            lost()
        self._inner.connection_lost(exc)


class BodyBudget:
    """Bounds on request bodies: each must arrive whole within `timeout` seconds of its
    headers (408 otherwise, and the connection is closed), and the bodies being read and held
    at once may add up to `limit` bytes (503 with Retry-After beyond it). A body is read
    before its handler runs, which then finds it read."""

    def __init__(self, limit: int, timeout: float, largest: int) -> None:
        self.limit = limit
        self.timeout = timeout
        self.largest = largest
        """The largest body accepted (the aiohttp application's client_max_size)."""
        self.held = 0
        """Bytes of the bodies being read or handled now (by their announced length, or the
        largest allowed when none is announced)."""

    def middleware(self) -> Any:  # an aiohttp middleware
        """The aiohttp middleware that applies the bounds."""

        @web.middleware
        async def bound(request: web.Request, handler: Any) -> Any:
            if not request.body_exists:
                return await handler(request)
            most = self.largest
            size = request.content_length
            if size is not None and size > most:
                return web.Response(
                    status=413, text=f"the body is {size} bytes; the limit is {most}\n"
                )
            size = size if size is not None else most
            if self.held + size > self.limit:
                return web.Response(
                    status=503,
                    headers={"Retry-After": "1"},
                    text=f"the server is reading {self.held} bytes of other requests' bodies, "
                    f"its limit (server.http_body_buffer_bytes): retry later\n",
                )
            self.held += size
            try:
                try:
                    async with asyncio.timeout(self.timeout):
                        await request.read()
                except TimeoutError:
                    answer = web.Response(
                        status=408,
                        text=f"the body did not arrive within {self.timeout:g}s of the headers "
                        "(server.http_body_timeout_seconds)\n",
                    )
                    answer.force_close()
                    return answer
                return await handler(request)
            finally:
                self.held -= size

        return bound
