"""A log that cannot write stops the server and acknowledges nothing more."""

from __future__ import annotations

import errno
from pathlib import Path

import grpc
import pytest

from pipewarden.server.app import App
from pipewarden.server.storage.wal import WriteAheadLog
from pipewarden.v1 import service_pb2_grpc
from tests.support.config import make_config
from tests.support.helpers import request, run
from tests.support.logfiles import FaultyIO


async def test_a_failing_disk_answers_unavailable_and_requests_a_stop(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    io = FaultyIO(fail_at=1, err=errno.ENOSPC, on="fsync")
    node = App(config, event_log=WriteAheadLog(tmp_path / "wal", io=io))
    await node.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            assert (await stub.Ingest(request(run("before")))).accepted == 1
            io.armed = True
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Ingest(request(run("during")))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            details = info.value.details() or ""
            assert (
                details.startswith(f"disk full: {tmp_path / 'wal'}") and "No space left" in details
            )
            assert node.stop_requested.is_set() and node.failure is not None
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Ingest(request(run("after")))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await node.close()
    # What was answered is there after a restart; nothing else is counted twice or invented.
    again = App(config, event_log=WriteAheadLog(tmp_path / "wal"))
    await again.start()
    try:
        p = again.partition.shards.get("p1")
        assert p is not None and p.total in (1, 2)  # "during" was written, only its fsync failed
        assert "after" not in again.partition.seen
    finally:
        await again.close()
