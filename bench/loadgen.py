"""The load client: sends pre-serialized IngestRequests over StreamIngest and times the answers.

Runs in the client worker process (see `bench.common.Worker`). Requests go out as bytes with an
identity serializer, so the client spends nothing on encoding; several streams are written and
read concurrently, each write without waiting for earlier answers (the server's own in-flight
limit pushes back), so the client keeps the server busy rather than waiting on it.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from typing import Any

import grpc

from bench.sink import METHOD
from pipewarden.v1 import service_pb2

__all__ = ["blast", "paced"]

_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

CONNECT_SECONDS = 10.0
"""How long to wait for a connection before giving up (the server may have died)."""

_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def blast(
    target: str, requests: Sequence[bytes], streams: int = 4, max_seconds: float = 30.0
) -> dict[str, Any]:
    """Send `requests` as fast as the server takes them, spread over `streams` streams; stop
    sending new ones after `max_seconds`. Returns the counts from the answers and the time from
    the first write to the last answer."""
    gc.collect()
    gc.disable()  # the client's pauses are not the server's latency
    try:
        return asyncio.run(_blast(target, requests, streams, max_seconds))
    finally:
        gc.enable()


def paced(
    target: str, requests: Sequence[bytes], rate: float, max_seconds: float
) -> dict[str, Any]:
    """Send `requests` on one stream at `rate` requests per second (on a fixed schedule, not
    waiting for answers) for at most `max_seconds`. Returns the counts and, per request, the
    seconds from just before its write to the arrival of its answer."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(_paced(target, requests, rate, max_seconds))
    finally:
        gc.enable()


def _new_totals() -> dict[str, Any]:
    return {"requests": 0, "events": 0, "accepted": 0, "duplicates": 0, "rejected": 0}


def _count(totals: dict[str, Any], raw: bytes) -> None:
    response = service_pb2.IngestResponse.FromString(raw)
    rejected = len(response.rejected)
    totals["requests"] += 1
    totals["accepted"] += response.accepted
    totals["duplicates"] += response.duplicates
    totals["rejected"] += rejected
    totals["events"] += response.accepted + response.duplicates + response.running + rejected
    if rejected and "first_rejection" not in totals:
        totals["first_rejection"] = response.rejected[0].reason


async def _blast(
    target: str, requests: Sequence[bytes], streams: int, max_seconds: float
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target, options=_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_SECONDS)
        # No serializers: bytes in, bytes out.
        method = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)
        chunks = [requests[i::streams] for i in range(streams)]
        began = time.perf_counter()
        deadline = began + max_seconds
        parts = await asyncio.gather(
            *(_one_stream(method, chunk, deadline) for chunk in chunks if chunk)
        )
        seconds = time.perf_counter() - began
    totals = _new_totals()
    for part in parts:
        for key, value in part.items():
            if key in totals and isinstance(value, int):
                totals[key] += value
            elif key not in totals:
                totals[key] = value
    totals["seconds"] = seconds
    totals["sent"] = sum(part["sent"] for part in parts)
    return totals


async def _one_stream(method: Any, chunk: Sequence[bytes], deadline: float) -> dict[str, Any]:
    # `Any`: grpc-stubs types grpc.aio as the sync API (no EOF, no argument-less calls).
    call = method()
    sent = 0

    async def write() -> None:
        nonlocal sent
        for raw in chunk:
            if time.perf_counter() > deadline:
                break
            await call.write(raw)
            sent += 1
        await call.done_writing()

    writer = asyncio.create_task(write())
    totals = _new_totals()
    try:
        while (raw := await call.read()) is not _EOF:
            _count(totals, raw)
        await writer
    finally:
        if not writer.done():
            writer.cancel()
            call.cancel()
    totals["sent"] = sent
    return totals


async def _paced(
    target: str, requests: Sequence[bytes], rate: float, max_seconds: float
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target, options=_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_SECONDS)
        method: Any = channel.stream_stream(
            METHOD, request_serializer=None, response_deserializer=None
        )
        call = method()
        sent_at: list[float] = []
        began = time.perf_counter()

        async def write() -> None:
            for i, raw in enumerate(requests):
                due = began + i / rate
                now = time.perf_counter()
                if now - began > max_seconds:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                sent_at.append(time.perf_counter())
                await call.write(raw)
            await call.done_writing()

        writer = asyncio.create_task(write())
        totals = _new_totals()
        latencies: list[float] = []
        try:
            while (raw := await call.read()) is not _EOF:
                latencies.append(time.perf_counter() - sent_at[len(latencies)])
                _count(totals, raw)
            await writer
        finally:
            if not writer.done():
                writer.cancel()
                call.cancel()
        totals["seconds"] = time.perf_counter() - began
        totals["sent"] = len(sent_at)
        totals["latencies"] = latencies
        return totals
