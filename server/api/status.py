"""Domain errors to status codes: the one table for gRPC, and its twin for HTTP.

The core and the alerting code raise the domain's errors (server/base/errors.py); this is the
only place that says which gRPC status (or HTTP status) each one is answered with. A `Busy`
carries the time after which to try again, sent as the trailing metadata RETRY_METADATA.
"""

from __future__ import annotations

from typing import Any

import grpc

from pipewarden.server.base.errors import (
    Busy,
    FailedPrecondition,
    InvalidArgument,
    LogError,
    NotFound,
    PermissionDenied,
    PipewardenError,
    TooLarge,
)

__all__ = [
    "GRPC_STATUS",
    "HTTP_STATUS",
    "RETRY_METADATA",
    "abort",
    "grpc_status",
    "http_status",
    "trailers",
]

RETRY_METADATA = "pipewarden-retry-ms"
"""Trailing metadata of a RESOURCE_EXHAUSTED that is a matter of load (a rate, a cap on
streams, the ingest queue), not of the request: the milliseconds after which to send it again.
Without it, RESOURCE_EXHAUSTED means the request itself is too large."""

GRPC_STATUS: dict[type[PipewardenError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Busy: grpc.StatusCode.RESOURCE_EXHAUSTED,
    LogError: grpc.StatusCode.UNAVAILABLE,
}
"""The gRPC status of each kind of error (a subclass answers as its nearest listed base)."""

HTTP_STATUS: dict[type[PipewardenError], int] = {
    InvalidArgument: 400,
    NotFound: 404,
    FailedPrecondition: 409,
    PermissionDenied: 403,
    TooLarge: 413,
    Busy: 429,
    LogError: 503,
}
"""The HTTP status of each kind of error, as GRPC_STATUS."""


def grpc_status(error: PipewardenError) -> grpc.StatusCode:
    """The status `error` is answered with; INTERNAL for a kind the table does not list."""
    for kind in type(error).__mro__:
        code = GRPC_STATUS.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def http_status(error: PipewardenError) -> int:
    """The HTTP status `error` is answered with; 500 for a kind the table does not list."""
    for kind in type(error).__mro__:
        code = HTTP_STATUS.get(kind)
        if code is not None:
            return code
    return 500


def trailers(error: PipewardenError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of the answer to `error`: the retry hint of a Busy."""
    if isinstance(error, Busy):
        return ((RETRY_METADATA, str(max(1, round(error.retry_after * 1000)))),)
    return ()


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: PipewardenError) -> None:
    """End the call with the status (and retry hint) of `error`."""
    await context.abort(grpc_status(error), str(error), trailing_metadata=trailers(error))
