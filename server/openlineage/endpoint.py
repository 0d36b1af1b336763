"""POST /api/v1/lineage: OpenLineage events in, as Marquez accepts them.

A body is one event, JSON, gzip-encoded or not. A run event that changes a run's state becomes
one execution event and takes the gRPC path: the same Ingestor validates, deduplicates, applies
and logs it, and the answer (201) waits until it is durable, as Ingest does; the outputs it names
teach the dataset producer map, durable before the answer too. Bad input is 400 with the reason
and changes nothing; 503 while recovering or when the log cannot write.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

from pipewarden.v1 import service_pb2
from server import metrics
from server.auth import ANONYMOUS, Principal
from server.errors import LogError
from server.eventlog import EventLog
from server.http import PRINCIPAL
from server.ingest import Ingestor
from server.openlineage.mapping import (
    BadEventError,
    LineageEvent,
    Translator,
    parse_event,
    pipeline_id,
)
from server.openlineage.producers import DatasetProducers

__all__ = ["PATH", "Authorizer", "LineageEndpoint", "allow_all"]

log = logging.getLogger(__name__)

PATH = "/api/v1/lineage"

Authorizer = Callable[[web.Request], str | None]
"""Decides whether a request may post events: None to let it in, else the reason it may not
(answered 401). The seam for bearer tokens (`auth.tokens`, a later issue): a writer token of the
pipeline's team, checked here before the body is read."""

_GZIP_MAGIC = b"\x1f\x8b"


def allow_all(request: web.Request) -> str | None:
    """No authentication: every request may post (the default while auth is not configured)."""
    return None


class LineageEndpoint:
    """The handler of POST /api/v1/lineage, and the producer map it keeps."""

    def __init__(
        self,
        ingestor: Ingestor,
        event_log: EventLog,
        translator: Translator,
        producers: DatasetProducers,
        *,
        ready: Callable[[], bool],
        max_body_bytes: int,
        authorize: Authorizer = allow_all,
    ) -> None:
        self.ingestor = ingestor
        self.log = event_log
        self.translator = translator
        self.producers = producers
        self.ready = ready
        self.max_body_bytes = max_body_bytes
        self.authorize = authorize

    def add_to(self, app: web.Application) -> None:
        """Route POST /api/v1/lineage of `app` here."""
        app.router.add_post(PATH, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        """One event: 201 once durable, 400 with the reason, 401, 403 (a reader's token, or a
        writer's for another team's pipeline), 413 or 503."""
        if not self.ready():
            return _error(503, "recovering: try again shortly")
        refusal = self.authorize(request)
        if refusal is not None:
            return _error(401, refusal)
        who = request.get(PRINCIPAL, ANONYMOUS)
        if who.role == "reader":
            return _error(403, "a reader token may not report runs")
        try:
            doc = _decode(await request.read(), self.max_body_bytes)
            return await self._apply(parse_event(doc), who)
        except BadEventError as e:
            metrics.OPENLINEAGE_EVENTS.labels("UNKNOWN", "rejected").inc()
            return _error(400, str(e))
        except _TooLarge as e:
            return _error(413, str(e))
        except LogError as e:
            return _error(503, str(e))

    async def _apply(self, event: LineageEvent, who: Principal) -> web.Response:
        kind = (event.event_type or "OTHER") if event.kind == "run" else event.kind.upper()
        body: dict[str, Any] = {}
        seq = 0
        outcome = "ignored"
        if event.kind in ("run", "job"):
            body["pipeline_id"] = pipeline_id(event.namespace, event.name)
        execution = self.translator.to_execution(event)
        if execution is not None and not who.can_write(execution.team):
            metrics.OPENLINEAGE_EVENTS.labels(kind, "rejected").inc()
            return _error(
                403, f"a token of team {who.team!r} may not report runs of team {execution.team!r}"
            )
        if execution is not None:
            body["execution_id"] = execution.execution_id
            request = service_pb2.IngestRequest(executions=[execution])
            # Nothing awaits between reading the state (in to_execution) and applying the
            # event, so no other event changes the pipeline in between.
            result, seq = self.ingestor.ingest(request.SerializeToString(), request)
            if result.rejected:
                metrics.OPENLINEAGE_EVENTS.labels(kind, "rejected").inc()
                return _error(400, result.rejected[0][2])
            outcome = (
                "accepted" if result.accepted else "duplicate" if result.duplicates else "running"
            )
        if event.kind in ("run", "job") and self.producers.record(
            body["pipeline_id"], event.outputs
        ):
            await self.producers.flush()
        if seq:
            await self.log.wait_durable(seq)
        metrics.OPENLINEAGE_EVENTS.labels(kind, outcome).inc()
        body["outcome"] = outcome
        return web.json_response(body, status=201)


class _TooLarge(Exception):
    pass


def _decode(body: bytes, limit: int) -> Any:
    """The JSON document of a body. aiohttp already inflates a body sent with
    `Content-Encoding: gzip`; one gzipped without saying so is inflated here, within `limit`."""
    if body[:2] == _GZIP_MAGIC:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as e:
            raise BadEventError(f"the body looks gzip-encoded but does not inflate: {e}") from e
        if len(body) > limit:
            raise _TooLarge(f"the event is larger than {limit} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadEventError(f"the body is not JSON: {e}") from e


def _error(status: int, message: str) -> web.Response:
    # The shape of Marquez's errors.
    return web.json_response({"code": status, "message": message}, status=status)
