"""The methods that change alerting: AcknowledgeAlert, CreateSilence, DeleteSilence. Each is
answered once its change is durable; what the domain refuses is answered with the status of
its error (server/api/status.py)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from pipewarden.server.alerting.convert import alert_message, silence_from_message, silence_message
from pipewarden.server.api import status
from pipewarden.server.api.auth import Principal, audit
from pipewarden.server.api.calls import Context
from pipewarden.server.base.errors import DomainError, LogError
from pipewarden.server.base.logsafe import safe
from pipewarden.server.partition.fleet import Fleet
from pipewarden.v1 import alert_pb2, service_pb2

__all__ = ["AlertWrites"]

T = TypeVar("T")


class AlertWrites:
    """Acknowledgements and silences."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def acknowledge_alert(
        self, request: service_pb2.AcknowledgeAlertRequest, context: Context, who: Principal
    ) -> alert_pb2.Alert:
        """AcknowledgeAlert: answered once the acknowledgement is durable. An admin, or a
        writer of the alert's team, may."""
        found = self.fleet.alert(request.alert_id)
        if found is not None and not who.can_write(found.team):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"alert {request.alert_id} is team {found.team!r}'s: acknowledging it takes an "
                "admin token or a writer token of that team",
            )
        alert = await _durably(context, self.fleet.acknowledge(request.alert_id, request.by))
        audit.info(
            "alert acknowledged: alert=%s team=%s by=%s token=%s",
            alert.alert_id,
            safe(alert.team),
            safe(request.by),
            who.describe(),
        )
        return alert_message(alert)

    async def create_silence(
        self, request: service_pb2.CreateSilenceRequest, context: Context, who: Principal
    ) -> alert_pb2.Silence:
        """CreateSilence: answered once the silence is durable."""
        if not request.HasField("silence"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "silence is required")
        if request.silence.silence_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "silence_id is assigned by the server: leave it empty",
            )
        wanted = silence_from_message(request.silence, self.fleet.now())
        if not who.can_write(wanted.team):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "a silence takes an admin token, or a writer token of the silence's team "
                "(a silence without a team mutes every team's alerts: admin only)",
            )
        created = await _durably(context, self.fleet.create_silence(wanted))
        audit.info(
            "silence created: silence=%s team=%s pipeline=%s by=%s token=%s",
            created.silence_id,
            safe(created.team) or "*",
            safe(created.pipeline_id) or "*",
            safe(created.created_by),
            who.describe(),
        )
        return silence_message(created)

    async def delete_silence(
        self, request: service_pb2.DeleteSilenceRequest, context: Context, who: Principal
    ) -> alert_pb2.Silence:
        """DeleteSilence: ends it now; answered once that is durable."""
        existing = self.fleet.silence(request.silence_id)
        if existing is not None and not who.can_write(existing.team):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"silence {request.silence_id} is not of this token's team: ending it takes an "
                "admin token or a writer token of its team",
            )
        ended = await _durably(context, self.fleet.delete_silence(request.silence_id, request.by))
        audit.info(
            "silence ended: silence=%s team=%s by=%s token=%s",
            ended.silence_id,
            safe(ended.team) or "*",
            safe(request.by),
            who.describe(),
        )
        return silence_message(ended)


async def _durably(context: Context, change: Awaitable[T]) -> T:
    """The result of a change once durable. A refusal ends the call with the status of its
    domain error; a failed log, with UNAVAILABLE."""
    try:
        return await change
    except (DomainError, LogError) as e:
        await status.abort(context, e)
        raise AssertionError("abort returned") from e  # context.abort always raises
