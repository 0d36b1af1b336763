"""Load limits against a real server: per-token rate limits, the cap on open streams, the cap on
a team's pipelines, and back-pressure on StreamIngest."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from pipewarden.v1 import service_pb2, service_pb2_grpc
from server.app import App
from server.config import AuthToken, IngestLimits
from server.eventlog import MemoryLog
from server.limits import RateLimiter
from tests.conftest import make_config
from tests.helpers import request, run

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
    app = App(make_config(tmp_path, max_streams=2))
    channel, stub = await _serving(app)
    try:
        watches = [stub.WatchAlerts(service_pb2.WatchAlertsRequest()) for _ in range(2)]
        for w in watches:
            await w.initial_metadata()
        third = stub.WatchAlerts(service_pb2.WatchAlertsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in third:
                pass
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watches[0].cancel()
        # Once one ends, a stream may open again (an ingest stream counts the same).
        await _until(lambda: app.service.streams.open < 2)
        answers = [r async for r in stub.StreamIngest(iter([request(run("e1", "p", "t"))]))]
        assert answers[0].accepted == 1
        watches[1].cancel()
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
