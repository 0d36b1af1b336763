"""Load held: many concurrent StreamIngest streams with team tokens, resident memory sampled.

Each stream belongs to one team and sends with its team's writer token (so authentication and
authorization are on the path), keeping a few requests in flight. The server's VmRSS is read
every 0.2 s. At the end the server is killed with SIGKILL and started again: the executions it
counts after recovery must equal those it acknowledged as accepted (nothing acknowledged lost).
`drive` is also what tests/test_load.py runs for a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pipewarden.client import execution
from pipewarden.v1 import service_pb2, service_pb2_grpc

__all__ = ["NAME", "TITLE", "LoadResult", "auth_config", "drive", "rss_bytes", "run", "totals"]

NAME = "load"
TITLE = "Load: concurrent streams, memory, nothing lost"

TEAMS = 8
IN_FLIGHT = 4
"""Requests each stream keeps unanswered."""
BATCH = 50
"""Executions per request."""
RSS_TARGET_MIB = 512.0
"""The bound resident memory must stay under (the full run's 200 streams for a minute)."""


def token(team: int) -> str:
    """Team `team`'s writer token (made up, for a test or a benchmark)."""
    return f"load-writer-{team}-0123456789abcdef"


def auth_config() -> dict[str, Any]:
    """A configuration document: a writer token per team, and an admin token; and the bound on
    remembered execution ids lowered to a million, so that a minute of load reaches it and the
    memory measured is the bounded kind (pipelines are few: 40 a team)."""
    tokens = [{"token": token(t), "team": f"team-{t}", "role": "writer"} for t in range(TEAMS)]
    tokens.append({"token": "load-admin-0123456789abcdef", "role": "admin"})
    return {"auth": {"tokens": tokens}, "server": {"max_seen_executions": 1_000_000}}


ADMIN = (("authorization", "Bearer load-admin-0123456789abcdef"),)


def rss_bytes(pid: int) -> int:
    """VmRSS of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class LoadResult:
    """What one drive did."""

    streams: int
    seconds: float
    sent: int = 0
    """Executions sent."""
    acknowledged: int = 0
    """Executions the server answered as accepted."""
    rss_samples: list[int] = field(default_factory=list)
    """VmRSS readings, bytes."""
    errors: list[str] = field(default_factory=list)

    @property
    def peak_rss_mib(self) -> float:
        """The largest reading, MiB."""
        return max(self.rss_samples, default=0) / 2**20


async def _stream(
    stub: service_pb2_grpc.PipelineMonitorStub,
    n: int,
    until: float,
    result: LoadResult,
) -> None:
    team = n % TEAMS
    slots = asyncio.Semaphore(IN_FLIGHT)
    sizes: list[int] = []

    async def requests() -> AsyncIterator[service_pb2.IngestRequest]:
        i = 0
        while time.monotonic() < until:
            await slots.acquire()
            batch = [
                execution(
                    f"s{n}-{i}-{j}",
                    f"team-{team}.p{(i * BATCH + j) % 40}",
                    f"team-{team}",
                    "failed" if j % 17 == 0 else "succeeded",
                    duration=1.0 + j,
                    records=j,
                )
                for j in range(BATCH)
            ]
            i += 1
            sizes.append(len(batch))
            result.sent += len(batch)
            yield service_pb2.IngestRequest(executions=batch)

    md = (("authorization", f"Bearer {token(team)}"),)
    try:
        async for answer in stub.StreamIngest(requests(), metadata=md):
            result.acknowledged += answer.accepted
            slots.release()
    except grpc.aio.AioRpcError as e:
        result.errors.append(f"stream {n}: {e.code().name}: {e.details()}")


async def totals(target: str) -> int:
    """Executions the server counts, over every team (asked with the admin token)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)
        r = await stub.ListTeamMetrics(service_pb2.ListTeamMetricsRequest(), metadata=ADMIN)
        return sum(t.total_executions for t in r.teams)


async def drive(
    target: str, pid: int, streams: int, seconds: float, log: Callable[[str], None] = print
) -> LoadResult:
    """`streams` concurrent StreamIngest streams for `seconds`, over a few channels (as many
    clients would), sampling the server's VmRSS."""
    result = LoadResult(streams, seconds)
    until = time.monotonic() + seconds
    channels = [grpc.aio.insecure_channel(target) for _ in range(min(8, streams))]

    async def sample() -> None:
        while True:
            result.rss_samples.append(rss_bytes(pid))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    try:
        stubs = [service_pb2_grpc.PipelineMonitorStub(c) for c in channels]
        await asyncio.gather(
            *(_stream(stubs[n % len(stubs)], n, until, result) for n in range(streams))
        )
    finally:
        sampler.cancel()
        for c in channels:
            await c.close()
    result.rss_samples.append(rss_bytes(pid))
    log(
        f"{streams} streams for {seconds:g}s: {result.acknowledged} acknowledged, "
        f"peak RSS {result.peak_rss_mib:.0f} MiB, {len(result.errors)} errors"
    )
    return result


def run(ctx: Any) -> Any:
    """The bench section: 200 streams for a minute (quick: 50 for 10 s)."""
    from bench.common import SectionResult, Target

    streams, seconds = (50, 10.0) if ctx.quick else (200, 60.0)
    section = SectionResult(NAME, TITLE)
    data_dir = ctx.workdir / "load-data"
    data_dir.mkdir(parents=True)
    config = auth_config()
    server = ctx.start_pipewarden("load", data_dir, config)
    try:
        server.wait_serving()
        idle = rss_bytes(server.pid)
        result = asyncio.run(drive(server.target, server.pid, streams, seconds, ctx.log))
        server.check_alive()
    finally:
        server.kill()  # a crash: what was acknowledged must come back
    again = ctx.start_pipewarden("load-recovered", data_dir, config)
    try:
        again.wait_serving()
        counted = asyncio.run(totals(again.target))
    finally:
        again.stop()
    rate = result.acknowledged / seconds
    section.add(f"executions/s acknowledged over {streams} streams", rate, "events/s")
    section.add("resident memory idle", idle / 2**20, "MiB")
    section.add(
        f"peak resident memory, {streams} streams for {seconds:g} s",
        result.peak_rss_mib,
        "MiB",
        Target("<=", RSS_TARGET_MIB, "MiB"),
    )
    section.add(
        "acknowledged executions missing after kill -9 and recovery",
        float(result.acknowledged - counted),
        "events",
        Target("<=", 0.0),
    )
    section.add(
        "streams ended with an error", float(len(result.errors)), "streams", Target("<=", 0)
    )
    section.details = {
        "streams": streams,
        "seconds": seconds,
        "sent": result.sent,
        "acknowledged": result.acknowledged,
        "counted_after_recovery": counted,
        "rss_samples_mib": [round(x / 2**20, 1) for x in result.rss_samples],
        "errors": result.errors[:10],
    }
    return section
