"""Real local peers for the notifier tests: an HTTP server that speaks the PagerDuty Events API v2,
the Slack incoming-webhook protocol and a generic webhook, and an SMTP server (aiosmtpd) with
optional STARTTLS, implicit TLS and login, its certificates made at test time (trustme).

Each HTTP path can be told how to answer the next requests (`script`): a status, a body,
headers such as Retry-After, a delay before answering. Otherwise it answers as the real service
would: PagerDuty 202 with the dedup_key (400 with errors for an invalid event), Slack 200 `ok`
(400 `invalid_payload`, `no_text` or `invalid_blocks`), the webhook 200.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

PD_PATH = "/v2/enqueue"
SLACK_PATH = "/services/T000/B000/XXXX"
HOOK_PATH = "/hook"
ROUTING_KEY = "0123456789abcdef0123456789abcdef"
"""A well-formed (32-character) routing key."""


@dataclass
class Answer:
    """A scripted answer."""

    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    """One request the peer received (whatever it answered)."""

    path: str
    body: Any
    headers: dict[str, str]
    at: float
    """time.monotonic() on arrival."""
    status: int = 0
    """What the peer answered."""


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpPeer:
    """PagerDuty, Slack and webhook endpoints on one loopback port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[Received] = []
        self.scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self.arrived = asyncio.Event()
        """Set whenever a request has been answered."""
        self.incoming = asyncio.Event()
        """Set whenever a request arrives (before any scripted delay)."""
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        """The full URL of a path."""
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to `path` so, in order; then as the service would."""
        self.scripts[path].extend(answers)

    def received(self, path: str, *, accepted_only: bool = False) -> list[Received]:
        """Requests to `path`, in order of arrival."""
        return [
            r
            for r in self.requests
            if r.path == path and (not accepted_only or 200 <= r.status < 300)
        ]

    async def wait_for(self, path: str, count: int, within: float = 10.0) -> list[Received]:
        """Wait until `count` requests to `path` were accepted; return them."""
        deadline = time.monotonic() + within
        while len(found := self.received(path, accepted_only=True)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)} accepted requests to {path} after {within}s, wanted {count}: "
                    f"{[(r.status, r.body) for r in self.received(path)]}"
                )
            self.arrived.clear()
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    await self.arrived.wait()
            except TimeoutError:
                pass
        return found

    async def start(self) -> None:
        """Listen (again, on the same port after `stop`)."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        """Stop listening: connections are then refused. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        record = Received(request.path, body, dict(request.headers), time.monotonic())
        self.requests.append(record)
        self.incoming.set()
        script = self.scripts.get(request.path)
        if script:
            answer = script.popleft()
        elif request.path == PD_PATH:
            answer = pagerduty_answer(body)
        elif request.path == SLACK_PATH:
            answer = slack_answer(body)
        else:
            answer = Answer(200, "")
        if answer.delay:
            await asyncio.sleep(answer.delay)
        record.status = answer.status
        self.arrived.set()
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)


def pagerduty_answer(body: Any) -> Answer:
    """What the Events API v2 answers: 202 and the dedup_key, or 400 with the errors."""
    errors: list[str] = []
    if not isinstance(body, dict):
        return Answer(400, json.dumps({"status": "invalid event", "message": "Invalid JSON"}))
    key = body.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("'routing_key' must be 32 characters")
    action = body.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
    dedup = body.get("dedup_key")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append("'dedup_key' is required for acknowledge and resolve")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            summary = payload.get("summary")
            if not isinstance(summary, str) or not summary or len(summary) > 1024:
                errors.append("'payload.summary' is missing or longer than 1024 characters")
            if not payload.get("source"):
                errors.append("'payload.source' is missing")
            if payload.get("severity") not in ("critical", "error", "warning", "info"):
                errors.append("'payload.severity' is invalid")
            if "timestamp" in payload:
                try:
                    datetime.fromisoformat(str(payload["timestamp"]).replace("Z", "+00:00"))
                except ValueError:
                    errors.append("'payload.timestamp' is not ISO 8601")
    if errors:
        return Answer(
            400,
            json.dumps(
                {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
            ),
        )
    answer = {"status": "success", "message": "Event processed", "dedup_key": dedup or "generated"}
    return Answer(202, json.dumps(answer))


def slack_answer(body: Any) -> Answer:
    """What an incoming webhook answers: `ok`, or 400 with the error's name."""
    if not isinstance(body, dict):
        return Answer(400, "invalid_payload")
    if not body.get("text") and not body.get("blocks"):
        return Answer(400, "no_text")
    for block in body.get("blocks", []):
        kind = block.get("type")
        text = block.get("text", {}).get("text", "")
        if kind == "header" and (block["text"].get("type") != "plain_text" or len(text) > 150):
            return Answer(400, "invalid_blocks")
        if kind == "section":
            fields = block.get("fields", [])
            if len(text) > 3000 or len(fields) > 10:
                return Answer(400, "invalid_blocks")
            if any(len(f.get("text", "")) > 2000 for f in fields):
                return Answer(400, "invalid_blocks")
    return Answer(200, "ok")


# -- SMTP -----------------------------------------------------------------------------------------


@dataclass
class Mail:
    """One message the SMTP peer accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    """Whether the session was encrypted (STARTTLS or implicit TLS)."""
    login: str | None


class Certificates:
    """A test certificate authority and a certificate for 127.0.0.1 and localhost."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = directory / "test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context with the certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        return context


class SmtpPeer:
    """An aiosmtpd server in the test's event loop.

    `starttls` offers STARTTLS with `certs`; `implicit_tls` wraps the socket in TLS from the
    first byte; `login` (user, password) requires AUTH; `reply` makes DATA answer with that
    reply instead of 250 (for 4xx and 5xx tests), once per listed item."""

    def __init__(
        self,
        certs: Certificates | None = None,
        *,
        starttls: bool = False,
        implicit_tls: bool = False,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.certs = certs
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.login = login
        self.mails: list[Mail] = []
        self.replies: deque[str] = deque()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """aiosmtpd's hook: keep the message, or answer as scripted."""
        if self.replies:
            return self.replies.popleft()
        assert isinstance(envelope.content, bytes)
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(
            Mail(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                message=message,
                tls=session.ssl is not None
                or server.transport.get_extra_info("ssl_object") is not None,
                login=session.auth_data.login.decode() if session.authenticated else None,
            )
        )
        return "250 OK"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            self.login is not None
            and isinstance(data, LoginPassword)
            and (data.login.decode(), data.password.decode()) == self.login
        )
        # handled=False: aiosmtpd answers a failure with 535 itself.
        return AuthResult(success=ok, handled=False, auth_data=data)

    def _protocol(self) -> SMTP:
        tls = self.certs.server_context() if self.certs and self.starttls else None
        return SMTP(
            self,
            hostname="localhost",
            tls_context=tls,
            authenticator=self._authenticate if self.login else None,
            # Over implicit TLS aiosmtpd cannot tell the session is encrypted: AUTH is offered
            # there without being required (requiring it would warn of plain-text AUTH).
            auth_required=self.login is not None and not self.implicit_tls,
            auth_require_tls=not self.implicit_tls,
        )

    async def start(self) -> None:
        """Listen on a free loopback port."""
        ssl_context = self.certs.server_context() if self.certs and self.implicit_tls else None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, "127.0.0.1", self.port or 0, ssl=ssl_context
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def wait_for(self, count: int, within: float = 10.0) -> list[Mail]:
        """Wait until `count` messages were accepted."""
        deadline = time.monotonic() + within
        while len(self.mails) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.mails)} mails after {within}s, wanted {count}")
            await asyncio.sleep(0.01)
        return self.mails
