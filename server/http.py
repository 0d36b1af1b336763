"""The HTTP port: /healthz, /readyz, /metrics (Prometheus text format), and the routes other
parts add (POST /api/v1/lineage, see server/openlineage/endpoint.py)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from server.auth import ANONYMOUS, Authenticator, Principal, audit
from server.logsafe import safe

__all__ = ["ADMIN_PATHS", "OPEN_PATHS", "PRINCIPAL", "HttpServer", "http_middleware"]


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
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self.registry = registry
        """What /metrics shows: the node's registry (see server/collector.py)."""
        self._routes = routes
        self._max_body_bytes = max_body_bytes
        self._auth = auth if auth is not None else Authenticator(())
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen. After it, `port` is the bound port (useful when asked for port 0)."""
        app = web.Application(
            client_max_size=self._max_body_bytes, middlewares=[http_middleware(self._auth)]
        )
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        for add_routes in self._routes:
            add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
        await site.start()
        for address in self._runner.addresses:
            self.port = int(address[1])
            break

    async def close(self) -> None:
        """Stop listening. Idempotent."""
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
