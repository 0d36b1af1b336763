"""Fixtures: a real Pipewarden server on a free port, and a real channel to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pipewarden.server.app import App
from pipewarden.v1 import service_pb2_grpc
from tests.support.config import make_config
from tests.support.natsserver import NatsServer


@pytest.fixture
def server_options() -> dict[str, Any]:
    """Override in a test module to change the server's configuration."""
    return {}


@pytest.fixture
async def app(tmp_path: Path, server_options: dict[str, Any]) -> AsyncIterator[App]:
    """A started server."""
    node = App(make_config(tmp_path, **server_options))
    await node.start()
    try:
        yield node
    finally:
        await node.close()


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the server."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> service_pb2_grpc.PipelineMonitorStub:
    """The typed stub."""
    return service_pb2_grpc.PipelineMonitorStub(channel)


@pytest.fixture
def free_port() -> Iterator[int]:
    """A loopback TCP port that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server with JetStream on a free port, its store under tmp_path."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()
