"""Connections and descriptors: idle and slow connections cannot stop the server or starve its
log of file descriptors; connections are capped on both ports; HTTP headers and bodies that
trickle are timed out, and the bodies held at once are bounded."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipewarden.server.app import App
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.storage import descriptors
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.config import make_config
from tests.support.helpers import request, run
from tests.support.process import ServerProcess, free_port


@pytest.fixture
def server_options() -> dict[str, Any]:
    return {}


@pytest.fixture
async def node(tmp_path: Path, server_options: dict[str, Any]) -> AsyncIterator[App]:
    app = App(make_config(tmp_path, **server_options))
    await app.start()
    try:
        yield app
    finally:
        await app.close()


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection, which must be soon."""
    async with asyncio.timeout(seconds):
        return await reader.read()


def _post(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("server_options", [{"handshake_timeout_seconds": 0.5}])
async def test_http_headers_that_trickle_are_cut_off(node: App) -> None:
    assert node.http is not None
    reader, writer = await _open(node.http.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
    assert await _closed_within(reader, 3.0) == b""
    writer.close()
    # An idle connection that never sent anything is closed the same way.
    reader, writer = await _open(node.http.port)
    assert await _closed_within(reader, 3.0) == b""
    writer.close()


@pytest.mark.parametrize("server_options", [{"http_body_timeout_seconds": 0.5}])
async def test_an_http_body_that_trickles_is_answered_408(node: App) -> None:
    assert node.http is not None
    reader, writer = await _open(node.http.port)
    writer.write(_post("/api/v1/lineage", 1000) + b'{"eventType": ')
    answer = await _closed_within(reader, 5.0)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"server.http_body_timeout_seconds" in answer
    writer.close()
    assert node.http.bodies.held == 0


@pytest.mark.parametrize(
    "server_options",
    [{"limits": IngestLimits(max_request_bytes=1 << 20), "http_body_buffer_bytes": 2 << 20}],
)
async def test_http_bodies_held_at_once_are_bounded(node: App) -> None:
    assert node.http is not None
    port = node.http.port
    slow = []
    for _ in range(2):  # two unfinished bodies of 1 MiB: the budget of 2 MiB is taken
        reader, writer = await _open(port)
        writer.write(_post("/api/v1/lineage", 1 << 20) + b"{")
        slow.append((reader, writer))
    await asyncio.sleep(0.2)
    assert node.http.bodies.held == 2 << 20
    reader, writer = await _open(port)
    writer.write(_post("/api/v1/lineage", 100) + b"x" * 100)
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), head
        assert b"Retry-After: 1" in head
    writer.close()
    for _, w in slow:
        w.close()
    # Once they are gone, their bytes are given back and a body is taken again.
    for _ in range(100):
        if node.http.bodies.held == 0:
            break
        await asyncio.sleep(0.02)
    assert node.http.bodies.held == 0


@pytest.mark.parametrize("server_options", [{"max_http_connections": 3}])
async def test_http_connections_are_capped(node: App) -> None:
    assert node.http is not None
    held = [await _open(node.http.port) for _ in range(3)]
    reader, writer = await _open(node.http.port)
    answer = await _closed_within(reader, 3.0)
    assert answer.startswith(b"HTTP/1.1 503") and b"server.max_http_connections" in answer
    writer.close()
    for _, w in held:
        w.close()
    for _ in range(100):
        if node.http.connections.open == 0:
            break
        await asyncio.sleep(0.02)
    reader, writer = await _open(node.http.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await _closed_within(reader, 3.0)).startswith(b"HTTP/1.1 200")
    writer.close()


@pytest.mark.parametrize("server_options", [{"handshake_timeout_seconds": 0.5}])
async def test_a_grpc_connection_that_never_handshakes_is_closed(node: App) -> None:
    reader, writer = await _open(node.grpc_port)
    await _closed_within(reader, 3.0)  # grpc says goodbye (GOAWAY) and closes
    assert reader.at_eof()
    writer.close()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


def _connect_many(port: int, count: int, into: list[socket.socket]) -> None:
    for _ in range(count):
        into.append(socket.create_connection(("127.0.0.1", port)))


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_cannot_starve_the_log_of_descriptors(
    tmp_path: Path, sockets: list[socket.socket]
) -> None:
    """With `ulimit -n 192`, 400 idle connections to the gRPC port and 150 to the HTTP port,
    then ingestion across many log segment switches: the server keeps serving, and everything
    it acknowledged is there after a restart."""
    limit = 192
    config = tmp_path / "pipewarden.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {
                    "reserved_descriptors": 48,
                    "wal_segment_bytes": 4096,
                    "handshake_timeout_seconds": 60.0,  # the connections stay: the cap holds
                }
            }
        )
    )
    http_port = free_port()
    data = tmp_path / "data"
    server = ServerProcess(
        data,
        "--config",
        str(config),
        "--http-listen",
        f"127.0.0.1:{http_port}",
        open_files=limit,
    )
    try:
        server.wait_serving()
        accepted = 0
        with grpc.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            accepted += stub.Ingest(request(run("e-first", "p1", "t"))).accepted
            _connect_many(server.port, 400, sockets)
            _connect_many(http_port, 150, sockets)
            time.sleep(0.5)
            assert server.proc.poll() is None, server.log()
            assert _descriptors(server.proc.pid) <= limit
            # The last HTTP connections were refused, with a reason.
            sockets[-1].settimeout(5)
            assert sockets[-1].recv(100).startswith(b"HTTP/1.1 503")
            for i in range(60):
                batch = [run(f"e{i}-{j}", f"p{j}", "t") for j in range(5)]
                accepted += stub.Ingest(request(*batch), timeout=10).accepted
            # Segments are named by their first entry: the log switched many times (a
            # segment of 4 KiB holds a few requests).
            assert max(int(p.stem) for p in (data / "wal").glob("*.seg")) > 40
            assert server.proc.poll() is None, server.log()
        assert accepted == 301
        for s in sockets:
            s.close()
        sockets.clear()
        # Free again, a new client connects and is served (once the server has seen the
        # closes: until then a new connection is over the cap and closed, and gRPC retries).
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(health_pb2.HealthCheckRequest(), timeout=20, wait_for_ready=True)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert server.stop() == 0, server.log()
    finally:
        if server.proc.poll() is None:
            server.kill()
    again = ServerProcess(data)
    try:
        again.wait_serving()
        with grpc.insecure_channel(again.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            team = stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team="t"))
            assert team.total_executions == 301
    finally:
        again.stop()


def test_the_descriptor_budget() -> None:
    budget = descriptors.plan(1024, 30, 256, 10_000, 1000, http=True)
    free = 1024 - 30 - 256 - descriptors.SPARE_DESCRIPTORS
    assert budget.grpc_connections + budget.http_connections == free
    assert budget.grpc_connections > budget.http_connections
    assert descriptors.plan(1024, 30, 256, 100, 50, http=True).grpc_connections == 100
    assert descriptors.plan(1024, 30, 256, 10_000, 1000, http=False).grpc_connections == free
    with pytest.raises(OSError, match=r"server\.reserved_descriptors"):
        descriptors.plan(128, 30, 96, 10_000, 1000, http=True)


def test_a_file_of_ours_opens_when_descriptors_run_out(tmp_path: Path) -> None:
    """Every descriptor taken (as by connections), the log's open still succeeds: a spare
    is given up for it."""
    script = f"""
import os, resource
from pipewarden.server.storage.descriptors import SPARES, open_file
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
SPARES.hold(2)
taken = []
try:
    while True:
        taken.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
fd = open_file({str(tmp_path / "segment")!r}, os.O_WRONLY | os.O_CREAT, 0o644)
print("opened", fd, len(SPARES))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("opened") and done.stdout.split()[-1] == "1"
