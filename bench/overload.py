"""Reads under ingest overload: 50 unthrottled StreamIngest streams, and reads timed meanwhile.

One client process floods a default-configured Pipewarden (no rate limits) with 50 streams
that write requests of 100 executions as fast as the server takes them; another, as an
operator's dashboard would, calls GetPipelineHealth, ListPipelineHealth (a page of 100) and
GetTeamMetrics in turn, one at a time with a short pause, and times each call. The reads are
timed first on the idle server, then under the flood. The server's peak resident memory
(VmHWM) is read at the end.
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from typing import Any

import grpc

from bench import loadgen
from bench.common import STORE, Context, SectionResult, Target, summarize_ms
from bench.sink import METHOD
from bench.workload import Fleet, varint
from pipewarden.v1 import service_pb2, service_pb2_grpc

__all__ = ["NAME", "TITLE", "run"]

NAME = "overload"
TITLE = "Reads under ingest overload (50 unthrottled streams)"

STREAMS = 50
CHANNELS = 10
"""Connections the streams share (ten clients of five streams each)."""
PIPELINES = 2000
SIZE = 100
"""Executions per ingest request."""
READ_PAUSE_SECONDS = 0.005
P99_TARGET = Target("<", 50.0, "ms")
READS = ("GetPipelineHealth", "ListPipelineHealth", "GetTeamMetrics")
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


def _plan(quick: bool) -> tuple[int, float, float]:
    """Ingest requests in the pool, seconds of flood, seconds of idle reads."""
    return (500, 6.0, 1.0) if quick else (1000, 20.0, 3.0)


# -- in the ingest worker -------------------------------------------------------------------------


def _prepare(target: str, requests: int) -> int:
    fleet = Fleet(PIPELINES)
    # Every pipeline once, so that the reads find them all.
    loadgen.blast(target, fleet.requests(range(PIPELINES), SIZE), streams=4, max_seconds=60)
    order = fleet.random_order(requests * SIZE, 3)
    STORE["pool"] = [
        [fleet.execution(p) for p in order[i : i + SIZE]] for i in range(0, len(order), SIZE)
    ]
    return requests


def _flood(target: str, seconds: float) -> dict[str, Any]:
    """STREAMS streams over CHANNELS connections, each writing requests as fast as the server
    reads them, for `seconds`. The requests are the pool's, their ids made new on each pass
    through it (the first 8 characters are the pass's number), so every event counts."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(_flood_streams(target, seconds))
    finally:
        gc.enable()


async def _flood_streams(target: str, seconds: float) -> dict[str, Any]:
    pool: list[list[bytes]] = STORE["pool"]
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    try:
        methods: list[Any] = [
            c.stream_stream(METHOD, request_serializer=None, response_deserializer=None)
            for c in channels
        ]
        began = time.perf_counter()
        deadline = began + seconds
        counts = await asyncio.gather(
            *(_one_stream(methods[k % CHANNELS], pool, k, deadline) for k in range(STREAMS))
        )
        took = time.perf_counter() - began
    finally:
        for c in channels:
            await c.close()
    return {
        "requests": sum(c[0] for c in counts),
        "accepted": sum(c[1] for c in counts),
        "seconds": took,
    }


async def _one_stream(
    method: Any, pool: list[list[bytes]], k: int, deadline: float
) -> tuple[int, int]:
    call = method()

    async def write() -> None:
        n = 0
        while time.perf_counter() < deadline:
            index = n * STREAMS + k
            tag = b"%08x" % (index // len(pool))
            executions = pool[index % len(pool)]
            # Each execution starts with its id's field: tag 0x0a, length 0x24, 36 characters.
            await call.write(
                b"".join(b"\x0a" + varint(len(e)) + e[:2] + tag + e[10:] for e in executions)
            )
            n += 1
        await call.done_writing()

    writer = asyncio.create_task(write())
    answered = accepted = 0
    try:
        while (raw := await call.read()) is not _EOF:
            answered += 1
            accepted += service_pb2.IngestResponse.FromString(raw).accepted
        await writer
    finally:
        if not writer.done():
            writer.cancel()
            call.cancel()
    return answered, accepted


# -- in the read worker ---------------------------------------------------------------------------


def _reads(target: str, seconds: float) -> dict[str, list[float]]:
    """Call the three reads in turn for `seconds`; their latencies in seconds, by name."""
    fleet = Fleet(PIPELINES)  # the same ids as the ingest worker's (they depend on the index)
    rng = random.Random(5)
    out: dict[str, list[float]] = {name: [] for name in READS}
    gc.collect()
    gc.disable()  # the client's pauses are not the server's latency
    try:
        with grpc.insecure_channel(target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            calls = {
                "GetPipelineHealth": lambda: stub.GetPipelineHealth(
                    service_pb2.GetPipelineHealthRequest(
                        pipeline_id=fleet.pipeline_ids[rng.randrange(fleet.size)]
                    ),
                    timeout=30,
                ),
                "ListPipelineHealth": lambda: stub.ListPipelineHealth(
                    service_pb2.ListPipelineHealthRequest(
                        team=rng.choice(fleet.teams), page_size=100
                    ),
                    timeout=30,
                ),
                "GetTeamMetrics": lambda: stub.GetTeamMetrics(
                    service_pb2.GetTeamMetricsRequest(team=rng.choice(fleet.teams)), timeout=30
                ),
            }
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                for name in READS:
                    began = time.perf_counter()
                    calls[name]()
                    out[name].append(time.perf_counter() - began)
                    time.sleep(READ_PAUSE_SECONDS)
    finally:
        gc.enable()
    return out


# -- in the harness -------------------------------------------------------------------------------


def run(ctx: Context) -> SectionResult:
    """Time reads idle, then under 50 unthrottled ingest streams."""
    res = SectionResult(NAME, TITLE)
    requests, seconds, idle_seconds = _plan(ctx.quick)
    with (
        ctx.worker() as ingest,
        ctx.worker() as reader,
        ctx.pipewarden("overload-pipewarden") as server,
    ):
        ingest.call(_prepare, server.target, requests, timeout=300)
        idle = reader.call(_reads, server.target, idle_seconds)
        flood: dict[str, Any] = {}

        def drive() -> None:
            flood.update(ingest.call(_flood, server.target, seconds, timeout=seconds + 300))

        cpu = server.cpu_seconds()
        driver = threading.Thread(target=drive, name="overload-flood")
        driver.start()
        time.sleep(1.0)  # the streams open and fill their in-flight allowance
        loaded = reader.call(_reads, server.target, seconds - 2.0, timeout=seconds + 120)
        driver.join()
        server.check_alive()
        cpu_used = server.cpu_seconds() - cpu
        peak = server.peak_rss_bytes()
        rss = server.rss_bytes()
    if "seconds" not in flood:
        raise RuntimeError("the flood did not finish")
    rate = flood["accepted"] / flood["seconds"]
    cpu_share = cpu_used / flood["seconds"]
    ctx.log(
        f"overload: {STREAMS} streams, {rate:,.0f} events/s accepted over {flood['seconds']:.1f}s, "
        f"peak RSS {peak / 2**20:.0f} MiB"
    )
    stats: dict[str, Any] = {}
    for name in READS:
        calm, busy = summarize_ms(idle[name]), summarize_ms(loaded[name])
        stats[name] = {"idle": calm, "overload": busy}
        ctx.log(
            f"{name}: idle p99 {calm['p99']:.2f} ms; under overload p50 {busy['p50']:.2f} ms, "
            f"p99 {busy['p99']:.2f} ms ({busy['count']} calls)"
        )
        res.add(
            f"{name} p99 under {STREAMS} unthrottled ingest streams",
            busy["p99"],
            "ms",
            P99_TARGET,
            note=f"p50 {busy['p50']:.2f} ms, max {busy['max']:.1f} ms; "
            f"idle p99 {calm['p99']:.2f} ms",
        )
    res.add(
        f"executions/s accepted over {STREAMS} unthrottled streams",
        rate,
        "events/s",
        note=f"{flood['requests']:,} requests answered in {flood['seconds']:.1f} s",
    )
    res.add(
        "peak resident memory under the flood",
        peak / 2**20,
        "MiB",
        note=f"{rss / 2**20:.0f} MiB at the end",
    )
    res.details.update(
        streams=STREAMS,
        executions_per_request=SIZE,
        pipelines=PIPELINES,
        flood={k: v for k, v in flood.items() if k != "latencies"},
        reads=stats,
        server_cpu_share=cpu_share,
        peak_rss_mib=peak / 2**20,
    )
    return res
