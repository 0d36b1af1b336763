"""The replay prefetch (server/partition/prefetch.py): a forked helper converts the log's tail
while the snapshot loads. Whatever it manages, recovery must build exactly the state of a
replay without it: the same pipelines, the same remembered ids."""

from __future__ import annotations

import marshal
import os
import shutil
from pathlib import Path

import grpc
import pytest

from pipewarden.server.base import failpoints
from pipewarden.server.base.errors import CorruptLogError
from pipewarden.server.core.dedup import key
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.partition.prefetch import Prefetch, _converted
from pipewarden.server.partition.recovery import recover
from pipewarden.server.partition.snapshot import SnapshotStore
from pipewarden.server.storage.wal import read_entries
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.durability import Node
from tests.support.helpers import T0, request, run
from tests.support.process import ServerProcess


def _history(k: int) -> list:
    """Request k of a mixed history: failures with errors, labels and upstreams, runs in
    flight and their ends, late successes, and ids sent before (duplicates)."""
    rows = []
    for i in range(40):
        n = k * 40 + i
        pipeline = f"p{n % 13}"
        if i % 10 == 3:
            rows.append(run(f"e{n}", pipeline, status="running", start=T0 + n))
        elif i % 10 == 4:
            rows.append(run(f"e{n - 1}", pipeline, start=T0 + n - 1))  # the end of that run
        elif i % 10 == 5 and k:
            rows.append(run(f"e{n - 40}", f"p{(n - 40) % 13}"))  # a duplicate
        elif i % 7 == 0:
            rows.append(
                run(
                    f"e{n}",
                    pipeline,
                    status="failed",
                    start=T0 + n,
                    error_message=f"boom {n}",
                    labels={"env": "prod", "k": str(k % 3)},
                )
            )
        else:
            late = i % 9 == 0
            rows.append(
                run(f"e{n}", pipeline, start=T0 + (n - 500 if late else n), upstream=["up"])
            )
    return rows


async def _build(data: Path, before: int, after: int, snapshots: int = 1) -> int:
    """A data directory: `before` requests, `snapshots` snapshots spread over them, then
    `after` requests in the log only. Returns the log entries after the newest snapshot."""
    node = Node(data, segment_bytes=64 * 1024)
    await node.open()
    for k in range(before):
        await node.ingest(request(*_history(k)))
        if (k + 1) % max(before // snapshots, 1) == 0:
            await node.snapshot()
    seq = node.wal.last_seq
    for k in range(before, before + after):
        outcome = await node.ingest(request(*_history(k)))
        assert outcome.accepted
    tail = node.wal.last_seq - seq
    await node.close()
    return tail


async def _recovered(data: Path, copy: str, *, prefetch: bool) -> tuple[Node, int]:
    shutil.copytree(data, data.parent / copy)
    node = Node(data.parent / copy, segment_bytes=64 * 1024)
    helper = await node.open(prefetch=prefetch)
    return node, helper.used if helper is not None else 0


async def test_prefetched_replay_builds_the_same_state(tmp_path: Path) -> None:
    tail = await _build(tmp_path / "data", before=20, after=30)
    plain, _ = await _recovered(tmp_path / "data", "plain", prefetch=False)
    fetched, used = await _recovered(tmp_path / "data", "fetched", prefetch=True)
    assert used == tail == 30
    assert fetched.state() == plain.state()
    assert list(fetched.seen) == list(plain.seen)
    assert fetched.wal.last_seq == plain.wal.last_seq
    await plain.close()
    await fetched.close()


async def test_a_helper_that_dies_midway_leaves_the_rest_to_the_parent(tmp_path: Path) -> None:
    await _build(tmp_path / "data", before=10, after=30)
    plain, _ = await _recovered(tmp_path / "data", "plain", prefetch=False)
    # The helper SIGKILLs itself after writing its fourth entry (the newest four).
    failpoints.arm("replay-prefetch@4")
    try:
        fetched, used = await _recovered(tmp_path / "data", "fetched", prefetch=True)
    finally:
        failpoints.arm("")
    assert used == 4
    assert fetched.state() == plain.state()
    assert list(fetched.seen) == list(plain.seen)
    await plain.close()
    await fetched.close()


async def test_replay_from_an_older_snapshot_converts_what_the_helper_skipped(
    tmp_path: Path,
) -> None:
    tail = await _build(tmp_path / "data", before=20, after=10, snapshots=2)
    newest = sorted((tmp_path / "data" / "snapshots").glob("*.snap"))[-1]
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(raw)
    plain, _ = await _recovered(tmp_path / "data", "plain", prefetch=False)
    fetched, used = await _recovered(tmp_path / "data", "fetched", prefetch=True)
    # The helper guessed the newest snapshot and converted only what follows it; the parent,
    # replaying from the older one, converted the entries in between itself.
    assert used == tail
    assert fetched.wal.last_seq - tail > int(newest.stem) - 10
    assert fetched.state() == plain.state()
    assert list(fetched.seen) == list(plain.seen)
    await plain.close()
    await fetched.close()


async def test_a_real_restart_after_kill_uses_the_prefetch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data)
    server.wait_serving()
    sent = 0
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)
        for k in range(60):  # 1.6 MB of log: above the prefetch's threshold
            rows = [
                run(f"k{k}-{i}", f"pipe-{i % 50}", labels={"env": "prod"}, upstream=["a", "b"])
                for i in range(400)
            ]
            answer = await stub.Ingest(request(*rows), timeout=10)
            assert answer.accepted == len(rows)
            sent += len(rows)
    server.kill()
    again = ServerProcess(data)
    again.wait_serving()
    async with grpc.aio.insecure_channel(again.target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)
        teams = await stub.ListTeamMetrics(service_pb2.ListTeamMetricsRequest(), timeout=10)
    again.stop()
    assert sum(t.total_executions for t in teams.teams) == sent
    assert "replay prefetch: " in again.log()
    assert "converted by the helper process" in again.log()


async def test_a_start_that_stops_on_a_corrupt_log_stops_the_helper(tmp_path: Path) -> None:
    await _build(tmp_path / "data", before=0, after=40)
    segments = sorted((tmp_path / "data" / "wal").glob("*.seg"))
    assert len(segments) >= 2
    older = segments[0]
    raw = bytearray(older.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    older.write_bytes(raw)
    node = Node(tmp_path / "data", segment_bytes=64 * 1024)
    helper = Prefetch.start(
        tmp_path / "data" / "wal", tmp_path / "data" / "snapshots", IngestLimits(), min_bytes=0
    )
    assert helper is not None
    with pytest.raises(CorruptLogError):
        await recover(node.store, node.wal, node.ingestor, node.shards, node.seen, prefetch=helper)
    # Recovery gave up, and took the helper with it: stopped and reaped, its file closed.
    with pytest.raises(ChildProcessError):
        os.waitpid(helper.pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG does not block
    await node.close()


async def test_the_helper_says_which_ids_replay_must_look_up_among_the_restored(
    tmp_path: Path,
) -> None:
    """Ids forgotten (here by count) and counted again after the snapshot are in both the
    snapshot and the tail: the helper names those rows, and replay looks up only them."""
    data = tmp_path / "data"
    node = Node(data, segment_bytes=64 * 1024, capacity=50)
    await node.open()
    await node.ingest(request(*(run(f"a{i}", f"p{i % 3}") for i in range(40))))
    await node.snapshot()
    await node.ingest(request(*(run(f"b{i}", f"p{i % 3}") for i in range(30))))  # forgets a0-a19
    again = await node.ingest(request(*(run(f"a{i}", f"p{i % 3}") for i in range(10))))
    assert again.accepted == 10
    await node.close()
    newest = node.store.paths()[0]
    found = SnapshotStore.load_ids(newest)
    assert found is not None and found[0] == int(newest.stem)
    seq, ids = found
    hits = [
        marshal.loads(_converted(e, IngestLimits(), ids, seq))[3]
        for _, e in read_entries(data / "wal", seq)
    ]
    assert hits == [[], list(range(10))]
    shutil.copytree(data, tmp_path / "plain")
    plain = Node(tmp_path / "plain", segment_bytes=64 * 1024, capacity=50)
    await plain.open()
    shutil.copytree(data, tmp_path / "fetched")
    fetched = Node(tmp_path / "fetched", segment_bytes=64 * 1024, capacity=50)
    helper = await fetched.open(prefetch=True)
    assert helper is not None and helper.used == helper.checked == 2
    assert fetched.state() == plain.state()
    assert (
        list(fetched.seen)
        == list(plain.seen)
        == [key(f"p{i % 3}", f"a{i}") for i in range(30, 40)]
        + [key(f"p{i % 3}", f"b{i}") for i in range(30)]
        + [key(f"p{i % 3}", f"a{i}") for i in range(10)]
    )
    await plain.close()
    await fetched.close()


def test_the_ids_of_a_snapshot_in_another_form_are_not_read(tmp_path: Path) -> None:
    assert SnapshotStore.load_ids(tmp_path / "missing.snap") is None
    (tmp_path / "torn.snap").write_bytes(b"PWSNAP\r\n")
    assert SnapshotStore.load_ids(tmp_path / "torn.snap") is None
