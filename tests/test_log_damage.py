"""Damage in the newest log segment that a crash cannot leave, against a real server process:
the start stops and says where and what --repair would drop; nothing acknowledged is dropped
silently."""

from __future__ import annotations

from pathlib import Path

import grpc

from pipewarden.server.storage.wal import SEGMENT_HEADER
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.helpers import request, run
from tests.support.logfiles import flip, record_offsets
from tests.support.process import ServerProcess

REQUESTS = 40
PER_REQUEST = 10


async def test_a_flipped_byte_before_whole_records_stops_the_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data)
    try:
        server.wait_serving()
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            for k in range(REQUESTS):
                batch = [run(f"r{k}-{i}", f"pipe-{i}", team="t") for i in range(PER_REQUEST)]
                assert (await stub.Ingest(request(*batch))).accepted == PER_REQUEST
    finally:
        server.kill()  # no snapshot: everything acknowledged is only in the log
    (segment,) = sorted((data / "wal").glob("*.seg"))
    offsets = record_offsets(segment)
    assert len(offsets) >= REQUESTS and offsets[0] == SEGMENT_HEADER.size
    damaged = offsets[len(offsets) // 2]
    flip(segment, damaged + 40)
    before = segment.read_bytes()

    refused = ServerProcess(data)
    try:
        status = refused.proc.wait(20)
    finally:
        refused.kill()
    output = refused.log()
    assert status == 1, output
    assert f"{segment}: checksum mismatch at byte {damaged}" in output, output
    assert "not a torn tail" in output and "--repair" in output, output
    assert "Traceback" not in output, output
    assert segment.read_bytes() == before  # refusing changed nothing

    repaired = ServerProcess(data, "--repair")
    try:
        repaired.wait_serving()
        async with grpc.aio.insecure_channel(repaired.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            team = await stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team="t"))
        # --repair keeps what precedes the damage, as the refusal said it would.
        assert team.total_executions == (len(offsets) // 2) * PER_REQUEST
        assert repaired.stop() == 0
    finally:
        repaired.kill()
