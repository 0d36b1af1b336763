"""The runner SDK: buffered reporters (asyncio and sync) against a real server, run tracking in
two lines, a full buffer while the server is down, a server killed and restarted mid-stream,
and the examples."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from pipewarden.client import AsyncReporter, Reporter, current_run, execution
from pipewarden.server.app import App
from pipewarden.v1 import execution_pb2, service_pb2, service_pb2_grpc
from tests.support.helpers import run
from tests.support.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent


async def team_total(stub: service_pb2_grpc.PipelineMonitorStub, team: str) -> int:
    metrics = await stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team=team))
    return int(metrics.total_executions)


async def test_batches_by_size_and_by_time(
    app: App, stub: service_pb2_grpc.PipelineMonitorStub
) -> None:
    target = f"127.0.0.1:{app.grpc_port}"
    async with AsyncReporter(target, batch_size=100, flush_interval=0.2) as reporter:
        for i in range(250):
            reporter.report(run(f"s{i}", f"p{i % 7}", "size"))
        assert await reporter.flush(timeout=10)
        assert reporter.stats.accepted == 250
        assert await team_total(stub, "size") == 250
        # Fewer than a batch: sent once the first has waited flush_interval, no flush needed.
        began = time.monotonic()
        reporter.report(run("t1", "t.p", team="time"))
        for _ in range(250):
            if not reporter.pending:
                break
            await asyncio.sleep(0.02)
        assert 0.15 < time.monotonic() - began < 5
        assert await team_total(stub, "time") == 1
        # Resending is harmless: the same ids are duplicates.
        for i in range(5):
            reporter.report(run(f"s{i}", f"p{i % 7}", "size"))
        reporter.report(run("bad", "bad.p", records=-1))
        assert await reporter.flush(timeout=10)
    s = reporter.stats
    assert (s.reported, s.accepted, s.duplicates, s.rejected, s.dropped) == (257, 251, 5, 1, 0)


async def test_a_full_buffer_drops_the_oldest_and_never_blocks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    reporter = AsyncReporter(down, max_buffered=10, backoff_initial=0.05)
    await reporter.start()
    with caplog.at_level(logging.WARNING, logger="pipewarden.reporter"):
        began = time.perf_counter()
        for i in range(1000):
            reporter.report(run(f"e{i}"))
        assert time.perf_counter() - began < 0.5  # never waits for the server
        assert not await reporter.flush(timeout=0.3)
        began = time.perf_counter()
        await reporter.close(timeout=0.2)
        assert time.perf_counter() - began < 2
    assert reporter.stats.dropped == 1000
    full = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(full) == 1


async def test_track_a_job_in_two_lines(
    app: App, stub: service_pb2_grpc.PipelineMonitorStub
) -> None:
    reporter = Reporter(f"127.0.0.1:{app.grpc_port}", team="jobs", flush_interval=0.05)

    @reporter.track("jobs.settle")
    def settle(n: int) -> int:
        if n < 0:
            raise ValueError("negative batch")
        current_run().records = n
        time.sleep(0.02)
        return n * 2

    @reporter.track("jobs.fetch")
    async def fetch() -> None:
        current_run().records = 3

    try:
        assert await asyncio.to_thread(settle, 5) == 10
        with pytest.raises(ValueError, match="negative batch"):
            await asyncio.to_thread(settle, -1)
        await fetch()
        with reporter.track("jobs.block", labels={"tier": "gold"}) as r:
            r.records = 9
        with pytest.raises(KeyboardInterrupt), reporter.track("jobs.block"):
            raise KeyboardInterrupt
        with pytest.raises(LookupError):
            current_run()
        assert await asyncio.to_thread(reporter.flush, 10)
    finally:
        await asyncio.to_thread(reporter.close)
    h = await stub.GetPipelineHealth(
        service_pb2.GetPipelineHealthRequest(pipeline_id="jobs.settle")
    )
    assert (h.succeeded, h.failed, h.in_flight) == (1, 1, 0)
    assert h.last_error_message == "ValueError: negative batch"
    assert h.avg_records_processed == pytest.approx(5 / 2)
    assert h.avg_duration_seconds > 0.005
    fetched = await stub.GetPipelineHealth(
        service_pb2.GetPipelineHealthRequest(pipeline_id="jobs.fetch")
    )
    assert fetched.succeeded == 1 and fetched.avg_records_processed == 3
    block = await stub.GetPipelineHealth(
        service_pb2.GetPipelineHealthRequest(pipeline_id="jobs.block")
    )
    assert (block.succeeded, block.cancelled) == (1, 1)
    # RUNNING and terminal event of each of the five runs.
    assert reporter.stats.running == 5 and reporter.stats.accepted == 5


def test_survives_a_server_killed_and_restarted_mid_stream(tmp_path: Path) -> None:
    """kill -9 while runs stream in, restart on the same port and data directory: every run is
    counted exactly once (resent batches that were durable come back as duplicates)."""
    data = tmp_path / "data"
    port = free_port()
    server = ServerProcess(data, port=port)
    server.wait_serving()
    reporter = Reporter(
        server.target, team="restart", batch_size=20, flush_interval=0.01, backoff_max=0.2
    )
    runs = 600
    sent = threading.Event()

    def pipeline_runner() -> None:
        for i in range(runs):
            rid = f"run-{i}"
            pid = f"restart.p{i % 5}"
            reporter.report(execution(rid, pid, "restart", "running", started_at=1e9 + i))
            reporter.report(
                execution(rid, pid, "restart", "succeeded", started_at=1e9 + i, duration=1.0)
            )
            if i % 20 == 0:
                time.sleep(0.005)
        sent.set()

    worker = threading.Thread(target=pipeline_runner)
    try:
        worker.start()
        deadline = time.monotonic() + 20
        while reporter.stats.accepted < 100 and time.monotonic() < deadline:
            time.sleep(0.005)
        server.kill()  # mid-stream: runs are still being reported
        assert not sent.is_set() or reporter.pending, "the stream ended before the kill"
        time.sleep(0.3)  # the reporter notices, backs off, and buffers meanwhile
        server = ServerProcess(data, port=port)
        server.wait_serving()
        worker.join(20)
        assert reporter.flush(timeout=20)
        stats = reporter.stats
        with grpc.insecure_channel(server.target) as ch:
            stub = service_pb2_grpc.PipelineMonitorStub(ch)
            team = stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team="restart"))
            pipelines = list(
                stub.ListPipelineHealth(
                    service_pb2.ListPipelineHealthRequest(team="restart")
                ).pipelines
            )
    finally:
        reporter.close(timeout=1)
        server.kill()
    assert team.total_executions == runs  # none lost, none counted twice
    assert team.succeeded == runs
    assert sum(p.in_flight for p in pipelines) == 0
    assert stats.retries >= 1
    assert stats.accepted + stats.duplicates == runs
    assert stats.dropped == 0
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    ("example", "expect"),
    [
        ("track_job.py", "reported 12 events"),
        ("async_reporter.py", "flushed=True accepted=1000 duplicates=0 dropped=0"),
        ("openlineage_job.py", "of example/daily_orders"),
    ],
)
async def test_examples_run(
    app: App, stub: service_pb2_grpc.PipelineMonitorStub, example: str, expect: str
) -> None:
    assert app.http is not None
    target = (
        f"http://127.0.0.1:{app.http.port}"
        if example.startswith("openlineage")
        else f"127.0.0.1:{app.grpc_port}"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / example),
        target,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    assert expect in out.decode()
    if example == "track_job.py":
        # Flushed at exit, without a close() in the example.
        h = await stub.GetPipelineHealth(
            service_pb2.GetPipelineHealthRequest(pipeline_id="payments.settle")
        )
        assert (h.succeeded, h.failed) == (4, 1)
    if example == "openlineage_job.py":
        h = await stub.GetPipelineHealth(
            service_pb2.GetPipelineHealthRequest(pipeline_id="example/daily_orders")
        )
        assert (h.team, h.succeeded, h.avg_records_processed) == ("analytics", 1, 1234)
        assert h.avg_duration_seconds >= 0.2


def test_status_of_a_tracked_run_is_the_api_enum() -> None:
    class Sink:
        def __init__(self) -> None:
            self.events: list[execution_pb2.PipelineExecution] = []

        def report(self, e: execution_pb2.PipelineExecution) -> None:
            self.events.append(e)

    sink = Sink()
    reporter = AsyncReporter("unused:1", team="t")
    reporter.report = sink.report  # type: ignore[method-assign]
    with reporter.track("p", execution_id=str(uuid.UUID(int=1))):
        pass
    assert [e.status for e in sink.events] == [
        execution_pb2.EXECUTION_STATUS_RUNNING,
        execution_pb2.EXECUTION_STATUS_SUCCEEDED,
    ]
    assert sink.events[1].finished_at.ToNanoseconds() >= sink.events[1].started_at.ToNanoseconds()


@pytest.mark.parametrize("server_options", [{"max_streams": 1}])
async def test_a_busy_server_is_retried_not_dropped(
    app: App, stub: service_pb2_grpc.PipelineMonitorStub
) -> None:
    # The server's only stream place is taken: the reporter's stream is refused with
    # RESOURCE_EXHAUSTED and a retry hint, and sends again once there is room.
    watch = stub.WatchAlerts(service_pb2.WatchAlertsRequest())
    await watch.initial_metadata()
    target = f"127.0.0.1:{app.grpc_port}"
    async with AsyncReporter(target, batch_size=10, flush_interval=0.05) as reporter:
        for i in range(20):
            reporter.report(run(f"b{i}", "busy.p", "busy"))
        for _ in range(200):
            if reporter.stats.retries:
                break
            await asyncio.sleep(0.02)
        assert reporter.stats.retries and not reporter.stats.accepted
        watch.cancel()
        assert await reporter.flush(timeout=10)
    assert (reporter.stats.accepted, reporter.stats.dropped) == (20, 0)
    assert await team_total(stub, "busy") == 20
