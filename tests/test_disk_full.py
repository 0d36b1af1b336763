"""A full disk, for real: a small tmpfs under the data directory. The server stops cleanly with
one clear line and a non-zero status, leaves no temporary file behind, and after space is freed
every acknowledged execution is there, counted once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pipewarden.server.openlineage.producers import DatasetProducers
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.helpers import request, run
from tests.support.process import ServerProcess

PER_REQUEST = 20
CONFIG = """
server:
  wal_segment_bytes: 262144
  snapshot_log_bytes: 400000    # snapshots (and their temporary files) while the disk fills
  snapshot_interval_seconds: 0
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted for the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a real full disk needs `mount -t tmpfs` (root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def grow(disk: Path, size: str = "32m") -> None:
    """Make room, as an operator would."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def temporaries(directory: Path) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if name.endswith(".tmp")
    ]


def fill(disk: Path) -> Path:
    """Write a file until the disk is full, to the last byte; return it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def batch(k: int) -> service_pb2.IngestRequest:
    # Long error messages fill the disk in a few dozen requests.
    return request(
        *(
            run(f"r{k}-{i}", f"pipe-{i}", team="full", error_message="x" * 2000)
            for i in range(PER_REQUEST)
        )
    )


async def send(target: str, ks: range) -> list[int]:
    """Send the requests one at a time until one is refused; the ones answered."""
    answered: list[int] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)
        for k in ks:
            try:
                response = await stub.Ingest(batch(k), timeout=10)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                break
            assert response.accepted + response.duplicates == PER_REQUEST
            answered.append(k)
    return answered


async def check_counted(target: str, answered: list[int], sent: int) -> None:
    """Every answered request is counted once; the one refused at most once."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)
        team = await stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team="full"))
        assert len(answered) * PER_REQUEST <= team.total_executions <= sent * PER_REQUEST
        for k in answered[-3:]:
            again = await stub.Ingest(batch(k))
            assert (again.accepted, again.duplicates) == (0, PER_REQUEST)


def assert_one_clear_line(output: str) -> None:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if " ERROR " in line]
    assert lines and "disk full: " in lines[0], output
    assert "No space left on device" in lines[0], output


async def test_a_disk_that_fills_while_ingesting_stops_the_server_cleanly(
    small_disk: Path,
) -> None:
    config = small_disk.parent / "pipewarden.yaml"
    config.write_text(CONFIG)
    data = small_disk  # the server's output goes beside it, not on it
    server = ServerProcess(data, "--config", str(config))
    try:
        server.wait_serving()
        answered = await send(server.target, range(1000))
        assert answered and len(answered) < 1000, "the disk never filled"
        status = server.proc.wait(20)
    finally:
        server.kill()
    output = server.log()
    assert status == 1, output
    assert_one_clear_line(output)
    assert not temporaries(data), output

    grow(small_disk)
    restarted = ServerProcess(data, "--config", str(config))
    try:
        restarted.wait_serving()
        await check_counted(restarted.target, answered, len(answered) + 1)
        assert restarted.stop() == 0
    finally:
        restarted.kill()
    assert "Traceback" not in restarted.log()


async def test_a_stop_on_a_full_disk_is_clean_and_the_next_start_clears_leftovers(
    small_disk: Path,
) -> None:
    data = small_disk  # the server's output goes beside it, not on it
    server = ServerProcess(data)
    try:
        server.wait_serving()
        answered = await send(server.target, range(10))
        assert answered == list(range(10))
        filler = fill(small_disk)
        # The stop's snapshot finds no room: one line says so, and the log keeps everything.
        status = server.stop()
    finally:
        server.kill()
    output = server.log()
    assert status == 1, output
    assert_one_clear_line(output)
    assert "snapshot" in output.split("disk full: ", 1)[1].splitlines()[0], output
    assert not temporaries(data), output

    filler.unlink()
    # What a crash in the middle of writing them would leave: removed at the next start.
    left = [data / "snapshots" / f"{7:020d}.snap.tmp", data / "lineage" / "producers.jsonl.tmp"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 100_000)
    restarted = ServerProcess(data)
    try:
        restarted.wait_serving()
        assert not temporaries(data)
        await check_counted(restarted.target, answered, len(answered))
        assert restarted.stop() == 0
    finally:
        restarted.kill()
    assert "Traceback" not in restarted.log()


def test_a_rewrite_of_the_dataset_producers_that_finds_no_room_cuts_only_the_torn_line(
    small_disk: Path,
) -> None:
    lineage = small_disk / "lineage"
    lineage.mkdir()
    lines = [
        json.dumps({"namespace": "ns", "name": f"d{i}", "producer": f"p{i}"}) for i in range(50)
    ]
    path = lineage / "producers.jsonl"
    path.write_text("\n".join(lines) + '\n{"namespace": "ns", "na')  # an append a crash cut
    filler = fill(small_disk)
    producers = DatasetProducers(lineage)
    producers.load()  # the compacting rewrite finds no room
    assert len(producers) == 50
    assert not temporaries(small_disk)
    filler.unlink()
    # The next append starts on a line of its own, so nothing is lost to the torn one.
    producers.record("p-new", [("ns", "new")])
    asyncio.run(producers.flush())
    again = DatasetProducers(lineage)
    again.load()
    assert len(again) == 51 and list(again.producers_of(("ns", "new"))) == ["p-new"]


def test_a_start_on_a_full_disk_says_so_and_leaves_nothing(small_disk: Path) -> None:
    (small_disk / "lineage").mkdir()  # what a start makes before the log
    (small_disk / "LOCK").touch()
    fill(small_disk)
    server = ServerProcess(small_disk)
    try:
        status = server.proc.wait(20)
    finally:
        server.kill()
    output = server.log()
    assert status == 1, output
    assert "cannot start: disk full: " in output and "Traceback" not in output, output
    assert not temporaries(small_disk)
