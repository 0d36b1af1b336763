"""Ingest admission: requests are applied in turn, reads keep priority under ingest overload, and
a unary Ingest beyond the waiting bound is refused with a retry hint, changing nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from pipewarden.server.api.admission import IngestTurns
from pipewarden.server.app import App
from pipewarden.server.storage.eventlog import MemoryLog
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.config import make_config
from tests.support.helpers import request, run

Stub = service_pb2_grpc.PipelineMonitorStub


async def test_turns_are_taken_one_at_a_time_in_order_and_through_the_loop() -> None:
    turns = IngestTurns(max_waiting_bytes=1 << 20)
    order: list[str] = []

    async def apply(name: str) -> None:
        async with turns.turn(10):
            order.append(name)
            # Ready while this one holds the turn: it runs before the next request's turn.
            asyncio.get_running_loop().call_soon(order.append, f"after {name}")

    await asyncio.gather(*(apply(n) for n in "abc"))
    assert order == ["a", "after a", "b", "after b", "c", "after c"]
    assert turns.waiting == 0 and turns.waiting_bytes == 0


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    turns = IngestTurns(max_waiting_bytes=100)
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with turns.turn(10):
            held.set()
            await release.wait()

    first = asyncio.create_task(holder())
    await held.wait()
    waiter = asyncio.create_task(turns.turn(60).__aenter__())
    await asyncio.sleep(0)
    assert turns.waiting_bytes == 60 and turns.crowded(50) and not turns.crowded(40)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert turns.waiting_bytes == 0
    release.set()
    await first
    async with asyncio.timeout(1):
        async with turns.turn(10):
            pass


class SlowLog(MemoryLog):
    """The in-memory log, whose append takes 5 ms of the event loop: a request that is
    costly to apply (as a large one is)."""

    def append(self, payload: bytes) -> int:
        time.sleep(0.005)
        return super().append(payload)


async def _flood(stub: Stub, n: int, count: int) -> int:
    """One stream of `count` requests, all written at once; how many were accepted."""
    requests = [request(run(f"s{n}-{i}", f"p{i % 5}", "t")) for i in range(count)]
    return sum([a.accepted async for a in stub.StreamIngest(iter(requests))])


async def test_reads_stay_quick_while_many_streams_flood_ingest(tmp_path: Path) -> None:
    app = App(make_config(tmp_path), event_log=SlowLog())
    await app.start()
    target = f"127.0.0.1:{app.grpc_port}"
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    try:
        stubs = [Stub(c) for c in channels]
        await stubs[0].Ingest(request(run("seed", "p1", "t")))
        floods = [asyncio.create_task(_flood(stubs[n % 3], n, 25)) for n in range(20)]
        await asyncio.sleep(0.3)  # every stream has requests waiting
        reads = []
        for _ in range(15):
            began = time.perf_counter()
            await stubs[3].GetPipelineHealth(service_pb2.GetPipelineHealthRequest(pipeline_id="p1"))
            reads.append(time.perf_counter() - began)
            await asyncio.sleep(0.01)
        async with asyncio.timeout(30):
            assert sum(await asyncio.gather(*floods)) == 20 * 25
        # Applied as they came, the twenty streams' requests held the first read two seconds
        # and the next ones hundreds of milliseconds. In turns, the first read waits behind
        # what was queued before it, and from then on reads have priority.
        assert reads[0] < 1.0, reads
        assert max(reads[1:]) < 0.15, reads
    finally:
        for c in channels:
            await c.close()
        await app.close()


async def test_a_unary_ingest_beyond_the_waiting_bound_is_refused_with_a_hint(
    tmp_path: Path,
) -> None:
    app = App(make_config(tmp_path, ingest_queue_bytes=100), event_log=SlowLog())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = Stub(channel)
            floods = [asyncio.create_task(_flood(stub, n, 10)) for n in range(10)]
            await asyncio.sleep(0.2)  # the streams' requests wait for their turns
            outcomes = []
            for i in range(10):
                try:
                    outcomes.append(await stub.Ingest(request(run(f"u{i}", "u", "t"))))
                except grpc.aio.AioRpcError as e:
                    outcomes.append(e)
            async with asyncio.timeout(30):
                assert sum(await asyncio.gather(*floods)) == 100
            refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
            assert refused
            for e in refused:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "server.ingest_queue_bytes" in (e.details() or "")
                assert ("pipewarden-retry-ms", "1000") in tuple(e.trailing_metadata() or ())
            # What was refused changed nothing; what was accepted is counted once.
            accepted = sum(
                o.accepted for o in outcomes if isinstance(o, service_pb2.IngestResponse)
            )
            if accepted:
                health = await stub.GetPipelineHealth(
                    service_pb2.GetPipelineHealthRequest(pipeline_id="u")
                )
                assert health.total_executions == accepted
            else:
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.GetPipelineHealth(
                        service_pb2.GetPipelineHealthRequest(pipeline_id="u")
                    )
    finally:
        await app.close()
