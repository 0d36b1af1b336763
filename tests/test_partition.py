"""The partition engine: a slice of the fleet that starts, recovers and stops on its own, wires
its own ingest and detection, and stops when its log fails; domain errors answer with the
status of one table."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from pipewarden.server.api.status import GRPC_STATUS, HTTP_STATUS, grpc_status, http_status
from pipewarden.server.api.status import trailers as status_trailers
from pipewarden.server.app import App
from pipewarden.server.base.errors import (
    Busy,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    LogError,
    NotFound,
    PermissionDenied,
    PipewardenError,
    TooLarge,
)
from pipewarden.server.partition.engine import Partition, PartitionSettings
from pipewarden.server.partition.fleet import StandaloneFleet
from pipewarden.server.storage.eventlog import MemoryLog
from pipewarden.v1 import service_pb2_grpc
from tests.support.config import make_config
from tests.support.helpers import request, run, until


def _settings(tmp_path: Path) -> PartitionSettings:
    return PartitionSettings(data_dir=tmp_path / "data", shards=4, window=16)


async def _ingest(partition: Partition, *runs: object) -> tuple[int, int]:
    req = request(*runs)  # type: ignore[arg-type]
    outcome, seq = partition.ingest(req.SerializeToString(), req)
    await partition.wait_durable(seq)
    return outcome.accepted, outcome.duplicates


async def test_a_partition_recovers_what_it_counted_and_closes_once(tmp_path: Path) -> None:
    first = Partition(_settings(tmp_path))
    await first.start()
    await first.start()  # idempotent
    assert await _ingest(first, run("e1"), run("e2", "p2"), run("e1", "p3")) == (3, 0)
    assert await _ingest(first, run("e1")) == (0, 1)
    await first.close()
    await first.close()  # idempotent
    # Its snapshot was written at the close.
    assert first.snapshots.paths()

    again = Partition(_settings(tmp_path))
    await again.start()
    try:
        fleet = StandaloneFleet(again)
        assert {p.pipeline_id: p.total for p in again.shards.pipelines()} == {
            "p1": 1,
            "p2": 1,
            "p3": 1,
        }
        assert fleet.teams() == ["team-a"]
        totals = fleet.team_totals("team-a")
        assert totals is not None and totals.pipelines == 3
        assert await _ingest(again, run("e2", "p2"), run("e3")) == (1, 1)
    finally:
        await again.close()


async def test_a_streak_that_pages_is_judged_in_the_request_that_made_it(tmp_path: Path) -> None:
    """The partition wires its own ingest to its own detection: the alert of a failure streak
    exists as soon as the request that made it is applied, before any detection pass."""
    partition = Partition(_settings(tmp_path))
    await partition.start()
    try:
        failures = [run(f"f{i}", status="failed", start=1_780_000_000.0 + 60 * i) for i in range(5)]
        req = request(*failures)
        partition.ingest(req.SerializeToString(), req)  # nothing awaited since
        assert [a.pipeline_id for a in partition.alerts.book.open_alerts()] == ["p1"]
        assert not partition.ingestor.pending
    finally:
        await partition.close()


class _LostLog(MemoryLog):
    """A log of another kind than the write-ahead log (one across the network, say) that loses
    its connection once armed: nothing more becomes durable."""

    armed = False

    async def wait_durable(self, seq: int) -> None:
        if self.armed:
            raise LogError("the log's server went away")


async def test_a_log_that_fails_stops_its_partition_and_the_node(tmp_path: Path) -> None:
    lost = _LostLog()
    node = App(make_config(tmp_path), event_log=lost)
    await node.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            assert (await stub.Ingest(request(run("before")))).accepted == 1
            lost.armed = True
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Ingest(request(run("during")))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "the log's server went away" in (info.value.details() or "")
        assert node.partition.failed.is_set()
        await until(node.stop_requested.is_set)
        assert isinstance(node.failure, LogError)
    finally:
        await node.close()
    # A failed partition writes no snapshot at its close: the log is what holds the truth.
    assert node.partition.snapshots.paths() == []


@pytest.mark.parametrize(
    ("error", "code", "http"),
    [
        (InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (NotFound("gone"), grpc.StatusCode.NOT_FOUND, 404),
        (FailedPrecondition("resolved"), grpc.StatusCode.FAILED_PRECONDITION, 409),
        (PermissionDenied("not yours"), grpc.StatusCode.PERMISSION_DENIED, 403),
        (TooLarge("split it"), grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
        (Busy("later", retry_after=0.25), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (LogError("disk full"), grpc.StatusCode.UNAVAILABLE, 503),
        (PipewardenError("a bug"), grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_each_domain_error_answers_with_the_status_of_the_table(
    error: PipewardenError, code: grpc.StatusCode, http: int
) -> None:
    assert grpc_status(error) == code
    assert http_status(error) == http


def test_every_domain_error_is_in_both_tables() -> None:
    def kinds(base: type[DomainError]) -> list[type[DomainError]]:
        return [base, *(k for sub in base.__subclasses__() for k in kinds(sub))]

    for kind in kinds(DomainError)[1:]:
        assert any(k in GRPC_STATUS for k in kind.__mro__), kind
        assert any(k in HTTP_STATUS for k in kind.__mro__), kind


def test_busy_carries_its_retry_hint() -> None:
    assert status_trailers(Busy("later", retry_after=0.25)) == (("pipewarden-retry-ms", "250"),)
    assert status_trailers(NotFound("gone")) == ()


async def test_a_partition_that_never_started_closes_cleanly(tmp_path: Path) -> None:
    partition = Partition(_settings(tmp_path))
    await asyncio.wait_for(partition.close(), 5)
    assert partition.failure is None
