"""kill -9 at every named failpoint of a real server process: nothing answered is lost, nothing
is counted twice. A client that retries unanswered requests after the restart must end with
every execution counted exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from pipewarden.server.base.failpoints import NAMES
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.helpers import request, run
from tests.support.process import ServerProcess

CONFIG = """
server:
  wal_segment_bytes: 4096       # rotate often
  snapshot_log_bytes: 6000      # snapshot (and truncate the log) often
  snapshot_interval_seconds: 0
"""
# How many times each failpoint passes before it fires: late enough that snapshots, rotations and
# truncations have happened before.
WHEN = {
    "wal-before-write": 12,
    "wal-after-write": 12,
    "wal-after-fsync": 12,
    "wal-mid-rotate": 3,
    "wal-before-truncate": 2,
    "snapshot-mid-write": 3,
    "snapshot-before-rename": 2,
}
PER_REQUEST = 10
CONCURRENT = 4


def batch(k: int) -> service_pb2.IngestRequest:
    return request(
        *(run(f"r{k}-e{i}", f"pipe-{(k * 7 + i) % 23}", team="crash") for i in range(PER_REQUEST))
    )


async def _send(target: str, ks: list[int], answered: set[int]) -> bool:
    """Send requests k in `ks`, CONCURRENT at a time; True when the server went away."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)

        async def one(k: int) -> None:
            response = await stub.Ingest(batch(k), timeout=10)
            assert response.accepted + response.duplicates == PER_REQUEST
            answered.add(k)

        for start in range(0, len(ks), CONCURRENT):
            results = await asyncio.gather(
                *(one(k) for k in ks[start : start + CONCURRENT]), return_exceptions=True
            )
            for r in results:
                if isinstance(r, grpc.aio.AioRpcError):
                    assert r.code() == grpc.StatusCode.UNAVAILABLE, r
                    return True
                if isinstance(r, BaseException):
                    raise r
    return False


@pytest.mark.parametrize("point", [*NAMES, "plain-kill"])
async def test_kill_at_failpoint_loses_nothing_answered(tmp_path: Path, point: str) -> None:
    config = tmp_path / "pipewarden.yaml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    env = {"PIPEWARDEN_FAILPOINTS": f"{point}@{WHEN[point]}"} if point in WHEN else {}
    server = ServerProcess(data, "--config", str(config), env=env)
    answered: set[int] = set()
    sent: list[int] = []
    try:
        server.wait_serving()
        if point == "plain-kill":
            sent = list(range(60))
            await _send(server.target, sent, answered)
            server.kill()
        else:
            # Rounds with pauses, so that snapshots (checked 5 times a second) come in between.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            died = False
            while not died and loop.time() < deadline:
                ks = list(range(len(sent), len(sent) + 40))
                sent += ks
                died = await _send(server.target, ks, answered)
                await asyncio.sleep(0.1)
            assert died, f"failpoint {point} never fired"
            server.proc.wait(10)
        assert server.proc.returncode == -9, server.log()
    finally:
        server.kill()

    restarted = ServerProcess(data, "--config", str(config))
    try:
        restarted.wait_serving()
        unanswered = [k for k in sent if k not in answered]
        again: set[int] = set()
        assert not await _send(restarted.target, unanswered, again)
        # Answered requests sent again are duplicates, every one.
        async with grpc.aio.insecure_channel(restarted.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            for k in sorted(answered)[:5]:
                response = await stub.Ingest(batch(k))
                assert (response.accepted, response.duplicates) == (0, PER_REQUEST)
            team = await stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team="crash"))
        assert team.total_executions == len(sent) * PER_REQUEST
        assert restarted.stop() == 0
    finally:
        restarted.kill()
    log = server.log() + restarted.log()
    assert "Traceback" not in log, log
