"""The ingest methods: Ingest and StreamIngest. Requests are decoded and applied in turns
(server/api/admission.py) and answered once durable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from pipewarden.server.api.admission import IngestTurns
from pipewarden.server.api.auth import Principal
from pipewarden.server.api.calls import UNDECODABLE, Context, parse, retry_later
from pipewarden.server.api.convert import ingest_response
from pipewarden.server.api.guard import Guard, own
from pipewarden.server.api.status import grpc_status
from pipewarden.server.base.errors import InvalidArgument, LogError, PipewardenError, TooLarge
from pipewarden.server.core.ingest import IngestOutcome
from pipewarden.server.partition.fleet import IngestTarget
from pipewarden.v1 import service_pb2

__all__ = ["IngestMethods"]


class IngestMethods:
    """Ingest and StreamIngest."""

    def __init__(
        self,
        target: IngestTarget,
        guard: Guard,
        turns: IngestTurns,
        *,
        max_executions_per_request: int,
        max_in_flight_per_stream: int,
    ) -> None:
        self.target = target
        self.guard = guard
        self.turns = turns
        self.max_executions = max_executions_per_request
        self.max_in_flight = max_in_flight_per_stream

    async def ingest(
        self, raw: bytes, context: Context, who: Principal
    ) -> service_pb2.IngestResponse:
        """Ingest: apply, wait until durable, answer."""
        await self.guard.may_ingest(who, context)
        request = await parse(service_pb2.IngestRequest, raw, context)
        if len(request.executions) > self.max_executions:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_many(request))
        if self.turns.crowded(len(raw)):
            await retry_later(
                context,
                f"{self.turns.waiting_bytes} bytes of ingest requests are waiting to be applied, "
                "the limit (server.ingest_queue_bytes): retry in 1s",
                1.0,
            )
        try:
            async with self.turns.turn(len(raw)):
                outcome, seq = self.target.ingest(raw, request, own(who))
            await self.target.wait_durable(seq)
        except LogError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return ingest_response(outcome)

    async def stream_ingest(
        self, requests: AsyncIterator[bytes], context: Context, who: Principal
    ) -> AsyncIterator[service_pb2.IngestResponse]:
        """StreamIngest: requests are applied as they arrive and answered in order, each once
        durable. At most max_in_flight_per_stream requests wait for their answer; until one
        is answered the stream is not read (a place is taken before reading), which pushes
        back on the client. The token's rate limit counts the stream's opening and each
        further request, and holds the stream back rather than ending it."""
        await self.guard.may_ingest(who, context)
        team = own(who)
        # Unbounded queue, bounded by the semaphore: the reader never blocks on the queue, so
        # it can always post its end-of-stream marker.
        pending: asyncio.Queue[tuple[IngestOutcome, int] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.max_in_flight)
        refusal: list[PipewardenError] = []

        async def read() -> None:
            try:
                incoming = aiter(requests)
                first = True
                while True:
                    await slots.acquire()
                    if not first:
                        # Within a stream the rate limit throttles instead of refusing: the
                        # stream is not read until the token's bucket allows the next request.
                        await self.guard.throttle(who.key)
                    first = False
                    try:
                        raw = await anext(incoming)
                    except StopAsyncIteration:
                        return
                    try:
                        # Decoded and applied in turn with every other ingest request
                        # (server/api/admission.py): waiting here holds the stream back.
                        async with self.turns.turn(len(raw)):
                            pending.put_nowait(self._apply_streamed(raw, team))
                    except (InvalidArgument, TooLarge, LogError) as e:
                        refusal.append(e)
                        return
            finally:
                pending.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await pending.get()) is not None:
                outcome, seq = item
                try:
                    await self.target.wait_durable(seq)
                except LogError as e:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
                yield ingest_response(outcome)
                slots.release()
            await reader  # re-raises what ended the reader, if anything did
            if refusal:
                await context.abort(grpc_status(refusal[0]), str(refusal[0]))
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    def _apply_streamed(self, raw: bytes, team: str | None) -> tuple[IngestOutcome, int]:
        """Decode and apply one request of a stream; what it raises ends the stream."""
        request = service_pb2.IngestRequest()
        try:
            request.ParseFromString(raw)
        except DecodeError:
            raise InvalidArgument(UNDECODABLE) from None
        if len(request.executions) > self.max_executions:
            raise TooLarge(self._too_many(request, "a request"))
        return self.target.ingest(raw, request, team)

    def _too_many(self, request: service_pb2.IngestRequest, what: str = "the request") -> str:
        return (
            f"{what} has {len(request.executions)} executions; the limit is "
            f"{self.max_executions} per request: split it"
        )
