"""A long-lived task that dies stops the server: its traceback is in the log, the exit status is
1, the log is flushed, and a restart has everything that was answered. Tasks are made to die
through failpoints armed with `:raise` (server/base/failpoints.py), in a real `pipewarden serve`."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.helpers import request, run
from tests.support.process import ServerProcess

CONFIG = """
server:
  snapshot_interval_seconds: 0.5
"""


@pytest.mark.parametrize(
    ("failpoint", "task"),
    [
        ("alert-tick@2:raise", "alert-timers"),  # the alert timers' second tick (~2 s)
        ("snapshot-before-rename:raise", "snapshots"),  # the first periodic snapshot
    ],
)
def test_a_task_that_dies_stops_the_server_and_loses_nothing(
    tmp_path: Path, failpoint: str, task: str
) -> None:
    config = tmp_path / "pipewarden.yaml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    server = ServerProcess(data, "--config", str(config), env={"PIPEWARDEN_FAILPOINTS": failpoint})
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            answer = stub.Ingest(request(*(run(f"e{i}", "p1") for i in range(5))), timeout=10)
            assert answer.accepted == 5
        status = server.proc.wait(20)
    finally:
        server.stop()
    log = server.log()
    assert status == 1, log[-3000:]
    assert f"task {task} died" in log and "Traceback" in log and "FailpointError" in log, log
    assert "stopped" in log  # a clean stop of the rest, not a crash

    again = ServerProcess(data, "--config", str(config))
    try:
        again.wait_serving()
        with grpc.insecure_channel(again.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            health = stub.GetPipelineHealth(
                service_pb2.GetPipelineHealthRequest(pipeline_id="p1"), timeout=10
            )
            assert health.total_executions == 5
    finally:
        assert again.stop() == 0, again.log()[-3000:]


def test_a_snapshot_that_fails_at_stop_still_flushes_the_log_and_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"PIPEWARDEN_FAILPOINTS": "snapshot-before-rename:raise"}  # the stop's snapshot
    server = ServerProcess(data, env=env)
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            answer = stub.Ingest(request(*(run(f"e{i}", "p1") for i in range(3))), timeout=10)
            assert answer.accepted == 3
    finally:
        status = server.stop()
    log = server.log()
    assert status == 1, log[-3000:]
    assert "no snapshot at stop" in log and "FailpointError" in log and "stopped" in log, log

    again = ServerProcess(data)
    try:
        again.wait_serving()
        with grpc.insecure_channel(again.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            health = stub.GetPipelineHealth(
                service_pb2.GetPipelineHealthRequest(pipeline_id="p1"), timeout=10
            )
            assert health.total_executions == 3
    finally:
        assert again.stop() == 0, again.log()[-3000:]
