"""Load limits against a real server: per-token rate limits, the cap on open streams, the cap on
a team's pipelines, and back-pressure on StreamIngest."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from pipewarden.server.api.auth import AuthToken
from pipewarden.server.api.limits import RateLimiter
from pipewarden.server.app import App
from pipewarden.server.base.ratelimit import TokenBucket
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.storage.eventlog import MemoryLog
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.config import make_config
from tests.support.helpers import request, run

Stub = service_pb2_grpc.PipelineMonitorStub


async def _serving(app: App) -> tuple[grpc.aio.Channel, Stub]:
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    return channel, Stub(channel)


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_token_bucket() -> None:
    now = [0.0]
    bucket = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a") == pytest.approx(0.5)
    assert bucket.take("b") == 0.0  # each key its own bucket
    now[0] += 0.5
    assert bucket.take("a") == 0.0
    assert bucket.take("a") > 0
    assert RateLimiter(rate=0, burst=1).take("a") == 0.0  # off


async def test_rate_limit_per_token(tmp_path: Path) -> None:
    tokens = (AuthToken("one", "a", "reader"), AuthToken("two", "a", "reader"))
    config = dataclasses.replace(
        make_config(tmp_path, rate_limit_per_second=0.5, rate_limit_burst=3), tokens=tokens
    )
    app = App(config)
    channel, stub = await _serving(app)
    try:
        one, two = (("authorization", "Bearer one"),), (("authorization", "Bearer two"),)
        for _ in range(3):
            await stub.ListPipelineHealth(service_pb2.ListPipelineHealthRequest(), metadata=one)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ListPipelineHealth(service_pb2.ListPipelineHealthRequest(), metadata=one)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit" in (e.value.details() or "")
        # Another token is not held back by the first.
        await stub.ListPipelineHealth(service_pb2.ListPipelineHealthRequest(), metadata=two)
    finally:
        await channel.close()
        await app.close()


async def test_a_stream_beyond_its_rate_is_slowed_not_ended(tmp_path: Path) -> None:
    app = App(make_config(tmp_path, rate_limit_per_second=20.0, rate_limit_burst=5))
    channel, stub = await _serving(app)
    try:
        began = asyncio.get_running_loop().time()
        requests = [request(run(f"e{i}", "p", "t")) for i in range(25)]
        answers = [r async for r in stub.StreamIngest(iter(requests))]
        took = asyncio.get_running_loop().time() - began
        # 5 at once from the bucket (the opening takes one), then 20 a second.
        assert sum(a.accepted for a in answers) == 25
        assert took >= 0.9, took
    finally:
        await channel.close()
        await app.close()


async def test_open_streams_are_capped(tmp_path: Path) -> None:
    app = App(make_config(tmp_path, max_streams=3, ingest_stream_reserve=1))
    channel, stub = await _serving(app)
    try:
        watches = [stub.WatchAlerts(service_pb2.WatchAlertsRequest()) for _ in range(2)]
        for w in watches:
            await w.initial_metadata()
        ingest = stub.StreamIngest()
        await ingest.write(request(run("e1", "p", "t")))
        assert (await ingest.read()).accepted == 1
        # All three places are taken: the next stream of any kind is refused.
        third = stub.StreamIngest(iter([request(run("e2", "p", "t"))]))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in third:
                pass
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_streams" in (e.value.details() or "")
        await ingest.done_writing()
        watches[0].cancel()
        # Once one ends, a stream may open again.
        await _until(lambda: app.service.streams.open < 2)
        answers = [r async for r in stub.StreamIngest(iter([request(run("e3", "p", "t"))]))]
        assert answers[0].accepted == 1
        watches[1].cancel()
    finally:
        await channel.close()
        await app.close()


async def _refused_watch(stub: Stub, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    """Open a WatchAlerts stream that must be refused; the refusal's message."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in stub.WatchAlerts(service_pb2.WatchAlertsRequest(), metadata=metadata):
            pass
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return e.value.details() or ""


async def _watching(
    stub: Stub, count: int, metadata: tuple[tuple[str, str], ...] = ()
) -> list[grpc.aio.UnaryStreamCall[service_pb2.WatchAlertsRequest, Any]]:
    calls = [
        stub.WatchAlerts(service_pb2.WatchAlertsRequest(), metadata=metadata) for _ in range(count)
    ]
    for call in calls:
        await call.initial_metadata()
    return calls


async def test_watchers_cannot_take_the_places_kept_for_ingest(tmp_path: Path) -> None:
    # Without auth: every connection is a caller of its own.
    app = App(make_config(tmp_path, max_streams=6, ingest_stream_reserve=2))
    await app.start()
    target = f"127.0.0.1:{app.grpc_port}"
    channels = [grpc.aio.insecure_channel(target) for _ in range(3)]
    try:
        stubs = [Stub(c) for c in channels]
        watches = await _watching(stubs[0], 2) + await _watching(stubs[1], 2)
        assert "server.ingest_stream_reserve" in await _refused_watch(stubs[2])
        # The places kept for ingestion are there for a writer.
        for i in range(2):
            answers = [
                r async for r in stubs[2].StreamIngest(iter([request(run(f"e{i}", "p", "t"))]))
            ]
            assert answers[0].accepted == 1
        for w in watches:
            w.cancel()
    finally:
        for c in channels:
            await c.close()
        await app.close()


TOKENS = (
    AuthToken("reader-a", "a", "reader"),
    AuthToken("reader-a2", "a", "reader"),
    AuthToken("reader-b", "b", "reader"),
    AuthToken("writer-a", "a", "writer"),
)


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_one_token_or_team_cannot_take_every_stream(tmp_path: Path) -> None:
    config = dataclasses.replace(
        make_config(tmp_path, max_streams=20, max_streams_per_caller=3, max_streams_per_team=5),
        tokens=TOKENS,
    )
    app = App(config)
    channel, stub = await _serving(app)
    try:
        reader_a, reader_a2, reader_b = (_bearer(t) for t in ("reader-a", "reader-a2", "reader-b"))
        watches = await _watching(stub, 3, reader_a)
        assert "server.max_streams_per_caller" in await _refused_watch(stub, reader_a)
        watches += await _watching(stub, 2, reader_a2)
        assert "server.max_streams_per_team" in await _refused_watch(stub, reader_a2)
        # Another team has its own places; team a's writer needs one of its team's to end.
        watches += await _watching(stub, 1, reader_b)
        # A reader cannot ingest, and its attempt takes no place.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in stub.StreamIngest(
                iter([request(run("e0", "p", "a"))]), metadata=reader_a
            ):
                pass
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        watches[0].cancel()
        await _until(lambda: app.service.streams.open == 5)
        writer = _bearer("writer-a")
        answers = [
            r
            async for r in stub.StreamIngest(iter([request(run("e1", "p", "a"))]), metadata=writer)
        ]
        assert answers[0].accepted == 1
        for w in watches:
            w.cancel()
    finally:
        await channel.close()
        await app.close()


async def test_pipelines_per_team_are_capped(tmp_path: Path) -> None:
    app = App(make_config(tmp_path, limits=IngestLimits(max_pipelines_per_team=2)))
    channel, stub = await _serving(app)
    try:
        r = await stub.Ingest(
            request(run("e1", "p1", "a"), run("e2", "p2", "a"), run("e3", "p3", "a"))
        )
        assert r.accepted == 2 and [x.index for x in r.rejected] == [2]
        assert "max_pipelines_per_team" in r.rejected[0].reason
        # Existing pipelines keep counting; other teams have their own allowance.
        r = await stub.Ingest(request(run("e4", "p1", "a"), run("e5", "q1", "b")))
        assert r.accepted == 2 and not r.rejected
        health = await stub.GetPipelineHealth(
            service_pb2.GetPipelineHealthRequest(pipeline_id="p1")
        )
        assert health.total_executions == 2
    finally:
        await channel.close()
        await app.close()


class GatedLog(MemoryLog):
    """The in-memory log, durable only once the test opens the gate: a slow disk."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.appended = 0

    def append(self, payload: bytes) -> int:
        self.appended += 1
        return super().append(payload)

    async def wait_durable(self, seq: int) -> None:
        if seq > 0:  # nothing appended yet is durable already
            await self.gate.wait()


async def test_stream_ingest_reads_only_when_there_is_room(tmp_path: Path) -> None:
    log = GatedLog()
    app = App(make_config(tmp_path, max_in_flight_per_stream=4), event_log=log)
    channel, stub = await _serving(app)
    try:
        total = 200

        async def requests() -> AsyncIterator[service_pb2.IngestRequest]:
            for i in range(total):
                yield request(run(f"e{i}", f"p{i % 7}", "t"))

        call = stub.StreamIngest(requests())
        await _until(lambda: log.appended >= 4)
        await asyncio.sleep(0.3)
        # The log is not durable: no more than the in-flight allowance has been taken in.
        assert log.appended == 4
        log.gate.set()
        accepted = 0
        async with asyncio.timeout(20):
            async for answer in call:
                accepted += answer.accepted
        assert accepted == total and log.appended == total
    finally:
        await channel.close()
        await app.close()


def test_the_bucket_refuses_what_it_cannot_pay_and_spends_nothing() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=1.0, burst=2, clock=lambda: now[0])
    assert bucket.take(3.0) == pytest.approx(1.0)  # more than it holds: wait, nothing spent
    assert bucket.take(2.0) == 0.0
    assert bucket.wait_time() == pytest.approx(1.0)
    now[0] += 10.0
    assert bucket.tokens == 0.0  # not refilled until asked
    bucket.refill()
    assert bucket.tokens == 2.0  # at most the burst
    bucket.hold(5.0)
    assert bucket.take() == pytest.approx(5.0)
    now[0] += 5.0
    assert bucket.take() == 0.0
