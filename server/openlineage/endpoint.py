"""POST /api/v1/lineage: OpenLineage events in, as Marquez accepts them.

A body is one event, JSON, gzip-encoded or not. A run event that changes a run's state becomes
one execution event and takes the gRPC path: the same partition validates, deduplicates, applies
and logs it, and the answer (201) waits until it is durable, as Ingest does; the outputs it names
teach the dataset producer map, durable before the answer too. Bad input is 400 with the reason
and changes nothing; 503 while recovering or when the log cannot write.

Whatever goes wrong while reading a client's body (decoding, parsing, mapping: see body and
mapping) is that body's fault and a 400, never a 500: everything the event would change is
decided, and checked, before anything changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pipewarden.server.api.auth import ANONYMOUS, Principal
from pipewarden.server.api.http import PRINCIPAL
from pipewarden.server.api.status import http_status
from pipewarden.server.base import metrics
from pipewarden.server.base.errors import LogError
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.openlineage.body import BodyTooLargeError, decode
from pipewarden.server.openlineage.mapping import (
    BadEventError,
    EventLimits,
    LineageEvent,
    Translator,
    parse_event,
    pipeline_id,
)
from pipewarden.server.openlineage.producers import DatasetProducers
from pipewarden.server.openlineage.settings import OpenLineageSettings
from pipewarden.server.partition.fleet import IngestTarget
from pipewarden.v1 import service_pb2

__all__ = ["PATH", "Authorizer", "LineageEndpoint", "allow_all", "event_limits"]

log = logging.getLogger(__name__)

PATH = "/api/v1/lineage"

Authorizer = Callable[[web.Request], str | None]
"""Decides whether a request may post events: None to let it in, else the reason it may not
(answered 401). The seam for bearer tokens (`auth.tokens`, a later issue): a writer token of the
pipeline's team, checked here before the body is read."""


def event_limits(limits: IngestLimits, settings: OpenLineageSettings) -> EventLimits:
    """The bounds of one event: the gRPC limits of the fields its strings become, and the
    OpenLineage settings' for datasets."""
    return EventLimits(
        max_id_length=limits.max_id_length,
        max_team_length=limits.max_team_length,
        max_label_length=limits.max_label_length,
        max_upstreams=limits.max_upstreams,
        max_error_message_length=limits.max_error_message_length,
        max_datasets=settings.max_datasets_per_event,
        max_dataset_name_length=settings.max_dataset_name_length,
    )


def allow_all(request: web.Request) -> str | None:
    """No authentication: every request may post (the default while auth is not configured)."""
    return None


class LineageEndpoint:
    """The handler of POST /api/v1/lineage, and the producer map it keeps."""

    def __init__(
        self,
        target: IngestTarget,
        translator: Translator,
        producers: DatasetProducers,
        *,
        ready: Callable[[], bool],
        max_body_bytes: int,
        authorize: Authorizer = allow_all,
        limits: EventLimits | None = None,
    ) -> None:
        self.target = target
        """Where the events' runs are ingested (the partition, standalone)."""
        self.translator = translator
        self.producers = producers
        self.ready = ready
        self.max_body_bytes = max_body_bytes
        self.authorize = authorize
        self.limits = limits if limits is not None else EventLimits()
        """Bounds on the strings and datasets of one event."""

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
            doc = decode(await request.read(), self.max_body_bytes)
            plan = self._plan(parse_event(doc, self.limits))
        except (BadEventError, BodyTooLargeError) as e:
            if isinstance(e, BadEventError):
                metrics.OPENLINEAGE_EVENTS.labels("UNKNOWN", "rejected").inc()
            return _error(http_status(e), str(e))
        except Exception as e:  # a client's body must never make a 500
            log.warning("an OpenLineage event could not be read", exc_info=True)
            metrics.OPENLINEAGE_EVENTS.labels("UNKNOWN", "rejected").inc()
            return _error(400, f"the event cannot be read: {type(e).__name__}: {e}")
        try:
            return await self._apply(plan, who)
        except LogError as e:
            return _error(http_status(e), str(e))

    def _plan(self, event: LineageEvent) -> _Plan:
        """What `event` would change, decided and checked (BadEventError) before anything
        does: the execution event, its request's bytes, and the producer and team of its
        outputs."""
        kind = (event.event_type or "OTHER") if event.kind == "run" else event.kind.upper()
        if event.kind not in ("run", "job"):
            return _Plan(event, kind)
        pid = pipeline_id(event.namespace, event.name)
        execution = self.translator.to_execution(event)
        team = execution.team if execution is not None else self.translator.team_of(event)
        request = None
        data = b""
        if execution is not None:
            request = service_pb2.IngestRequest(executions=[execution])
            data = request.SerializeToString()
        return _Plan(event, kind, pid, team, request, data)

    async def _apply(self, plan: _Plan, who: Principal) -> web.Response:
        event, kind = plan.event, plan.kind
        body: dict[str, Any] = {}
        seq = 0
        outcome = "ignored"
        if plan.pipeline_id:
            body["pipeline_id"] = plan.pipeline_id
            if not who.can_write(plan.team):
                metrics.OPENLINEAGE_EVENTS.labels(kind, "rejected").inc()
                return _error(
                    403, f"a token of team {who.team!r} may not report jobs of team {plan.team!r}"
                )
            refusal = self.producers.check(plan.pipeline_id, plan.team, event.outputs)
            if refusal is not None:
                metrics.OPENLINEAGE_EVENTS.labels(kind, "rejected").inc()
                return _error(400, refusal)
        if plan.request is not None:
            execution = plan.request.executions[0]
            body["execution_id"] = execution.execution_id
            # Nothing awaits between reading the state (in to_execution) and applying the
            # event, so no other event changes the pipeline in between.
            result, seq = self.target.ingest(plan.data, plan.request)
            if result.rejected:
                metrics.OPENLINEAGE_EVENTS.labels(kind, "rejected").inc()
                return _error(400, result.rejected[0][2])
            outcome = (
                "accepted" if result.accepted else "duplicate" if result.duplicates else "running"
            )
        if plan.pipeline_id and self.producers.record(plan.pipeline_id, event.outputs, plan.team):
            await self.producers.flush()
        if seq:
            await self.target.wait_durable(seq)
        metrics.OPENLINEAGE_EVENTS.labels(kind, outcome).inc()
        body["outcome"] = outcome
        return web.json_response(body, status=201)


@dataclass(frozen=True)
class _Plan:
    """What one event changes, decided before anything does."""

    event: LineageEvent
    kind: str
    """The event's kind for metrics: its event type, or JOB or DATASET."""
    pipeline_id: str = ""
    """The job's pipeline (its producer of outputs); empty for a DatasetEvent."""
    team: str = ""
    request: service_pb2.IngestRequest | None = None
    """The execution event to ingest; None when the event changes no run."""
    data: bytes = b""
    """`request` serialized."""


def _error(status: int, message: str) -> web.Response:
    # The shape of Marquez's errors.
    return web.json_response({"code": status, "message": message}, status=status)
