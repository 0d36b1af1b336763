"""What every gRPC method shares: the context type, decoding a request, ending a call."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from pipewarden.server.api.status import RETRY_METADATA
from pipewarden.v1 import anomaly_pb2

__all__ = ["UNDECODABLE", "Context", "check_severity", "parse", "retry_later", "serialize"]

M = TypeVar("M", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]
"""The context of a call on the grpc.aio server."""

UNDECODABLE = "the request is not a valid protobuf message of the expected type"
"""The answer (INVALID_ARGUMENT) to bytes that do not decode."""


async def parse(request_type: type[M], raw: bytes, context: Context) -> M:
    """`raw` decoded as `request_type`; otherwise the call ends with INVALID_ARGUMENT."""
    request = request_type()
    try:
        request.ParseFromString(raw)
    except DecodeError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE)
    return request


def serialize(message: Message) -> bytes:
    """The response's bytes (methods are registered with raw-bytes serializers)."""
    return message.SerializeToString()


async def check_severity(value: int, context: Context) -> None:
    """End the call with INVALID_ARGUMENT unless `value` is a known Severity."""
    if value not in anomaly_pb2.Severity.values():
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"min_severity {value} is not a known Severity"
        )


async def retry_later(context: Context, message: str, seconds: float) -> None:
    """End the call with RESOURCE_EXHAUSTED and the hint to retry in `seconds`."""
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        trailing_metadata=((RETRY_METADATA, str(max(1, round(seconds * 1000)))),),
    )
