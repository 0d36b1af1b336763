"""Delta snapshots: a snapshot after the first holds only the pipelines changed since the one
before, a start reads the whole snapshot and its deltas (past an unusable one, from the log),
and a whole snapshot comes back when the deltas have grown."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest

from pipewarden.server.partition.snapshot import MAX_DELTAS, SnapshotStore
from pipewarden.storage.v1 import storage_pb2
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.durability import Node
from tests.support.helpers import T0, request, run
from tests.support.process import ServerProcess


def runs(tag: str, pipelines: range, status: str = "succeeded") -> list:
    """One run of each pipeline in `pipelines`."""
    return [run(f"{tag}-{i}", f"p{i}", status=status, start=T0 + i, records=i) for i in pipelines]


def state(node: Node) -> dict[str, bytes]:
    """Every pipeline's whole state, by id (the order of the shards' dicts aside)."""
    return {
        m.pipeline_id: m.SerializeToString(deterministic=True)
        for shard in node.shards.dump()
        for m in shard.pipelines
    } | {
        f"teams {s.index}": storage_pb2.ShardSnapshot(index=s.index, teams=sorted(
            s.teams, key=lambda t: t.team)).SerializeToString(deterministic=True)
        for s in node.shards.dump()
    }  # fmt: skip


def pipelines_in(path: Path) -> set[str]:
    """The ids of the pipelines one snapshot file holds."""
    return {m.pipeline_id for s in SnapshotStore.load(path).shards for m in s.pipelines}


async def test_a_delta_holds_what_changed_and_a_start_restores_the_same_state(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path)
    await node.open()
    await node.ingest(request(*runs("a", range(200))))
    await node.snapshot()
    assert [p.suffix for p in node.store.paths()] == [".snap"]
    assert node.store.deltas() == []

    await node.ingest(request(*runs("b", range(5), "failed")))  # 5 pipelines change
    await node.snapshot()
    (seq, parent, first), *_ = node.store.deltas()
    assert parent == int(node.store.paths()[0].stem) and seq == node.wal.last_seq
    assert pipelines_in(first) == {f"p{i}" for i in range(5)}

    # New pipelines and changed ones; then a tail that no snapshot has.
    await node.ingest(request(*runs("c", range(3, 8)), *runs("c", range(300, 303))))
    await node.snapshot()
    second = node.store.deltas()[0][2]
    assert node.store.deltas()[0][1] == seq  # built on the first delta
    assert pipelines_in(second) == {f"p{i}" for i in (*range(3, 8), *range(300, 303))}
    at_second = state(node)
    await node.ingest(request(*runs("d", range(100, 110), "cancelled")))
    expected = state(node)
    await node.close()

    # The whole snapshot and its deltas alone, without the log, are the state at the second.
    loaded = SnapshotStore(node.store.directory).load_latest()
    assert loaded is not None and loaded.path == second and len(loaded.deltas) == 2
    probe = Node(tmp_path / "probe")
    probe.shards.restore(loaded.shards, loaded.deltas)
    assert state(probe) == at_second

    again = Node(tmp_path)
    await again.open()
    assert state(again) == expected
    assert again.store.newest() == second
    # What the deltas counted is still a duplicate (the ids are in every delta whole).
    outcome = await again.ingest(request(*runs("c", range(300, 303))))
    assert outcome.accepted == 0
    await again.close()


async def test_an_unusable_delta_falls_back_to_its_parent_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(tmp_path)
    await node.open()
    await node.ingest(request(*runs("a", range(100))))
    await node.snapshot()
    for k in range(3):
        await node.ingest(request(*runs(f"k{k}", range(k, 10 * k + 1))))
        await node.snapshot()
    expected = state(node)
    await node.close()
    deltas = node.store.deltas()
    assert len(deltas) == 3
    newest = deltas[0][2]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = Node(tmp_path)
        await again.open()
    assert "unusable" in caplog.text and newest.name in caplog.text
    assert state(again) == expected
    # The next delta builds on the last usable file: a start reads it after that one.
    await again.ingest(request(*runs("z", range(2))))
    await again.snapshot()
    expected = state(again)
    assert again.store.deltas()[0][1] == deltas[1][0]
    await again.close()
    third = Node(tmp_path)
    await third.open()
    assert state(third) == expected
    await third.close()


async def test_a_whole_snapshot_again_when_the_deltas_have_grown(tmp_path: Path) -> None:
    node = Node(tmp_path, segment_bytes=4096)
    await node.open()
    await node.ingest(request(*runs("a", range(100))))
    await node.snapshot()
    for k in range(MAX_DELTAS):
        await node.ingest(request(*runs(f"k{k}", range(2))))
        await node.snapshot()
    assert len(node.store.paths()) == 1 and len(node.store.deltas()) == MAX_DELTAS
    await node.ingest(request(*runs("full", range(2))))
    await node.snapshot()  # after MAX_DELTAS deltas: whole
    assert len(node.store.paths()) == 2 and len(node.store.deltas()) == MAX_DELTAS
    # A delta as large as the whole snapshot before it: the next one is whole.
    await node.ingest(request(*runs("all", range(100))))
    await node.snapshot()
    assert len(node.store.deltas()) == MAX_DELTAS + 1
    await node.ingest(request(*runs("more", range(1))))
    await node.snapshot()
    # Three whole snapshots made: the oldest and the deltas after it are gone.
    whole = node.store.paths()
    assert len(whole) == 2
    assert [seq for seq, _, _ in node.store.deltas()] == [
        seq for seq, _, _ in node.store.deltas() if seq > int(whole[-1].stem)
    ]
    assert len(node.store.deltas()) == 1
    assert node.wal.first_seq <= int(whole[-1].stem) + 1
    expected = state(node)
    await node.close()
    again = Node(tmp_path)
    await again.open()
    assert state(again) == expected
    await again.close()


async def test_a_delta_that_failed_or_was_cancelled_leaves_its_pipelines_to_the_next(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path)
    await node.open()
    await node.ingest(request(*runs("a", range(1500))))
    await node.snapshot()
    await node.ingest(request(*runs("b", range(3))))
    # The delta's temporary file cannot be made: the write fails after the pipelines' flags
    # were taken; the next delta must still hold them.
    seq = node.wal.last_seq
    blocker = node.store.directory / f"{seq:020d}-{seq - 1:020d}.delta.tmp"
    blocker.mkdir()
    with pytest.raises(OSError):
        await node.snapshot()
    blocker.rmdir()
    assert node.shards.changed == 3
    await node.ingest(request(*runs("c", range(10, 12))))
    # A stop cancels a snapshot under way (here: once it has begun writing pipelines).
    await node.ingest(request(*runs("d", range(100, 1400))))
    task = asyncio.ensure_future(node.snapshot())
    for _ in range(100_000):
        if node.shards.job is not None and list(node.store.directory.glob("*.tmp")):
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("the snapshot never began writing")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert node.store.deltas() == [] and not list(node.store.directory.glob("*.tmp"))
    await node.snapshot()
    (_, parent, delta), *_ = node.store.deltas()
    assert parent == int(node.store.paths()[0].stem)
    want = {f"p{i}" for i in (*range(3), 10, 11, *range(100, 1400))}
    assert pipelines_in(delta) == want
    expected = state(node)
    await node.close()
    again = Node(tmp_path)
    await again.open()
    assert state(again) == expected
    await again.close()


async def test_a_whole_snapshot_that_failed_makes_the_next_one_whole(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.open()
    await node.ingest(request(*runs("a", range(50))))
    blocker = node.store.directory / f"{node.wal.last_seq:020d}.snap.tmp"
    blocker.mkdir(parents=True)
    with pytest.raises(OSError):
        await node.snapshot()
    blocker.rmdir()
    await node.ingest(request(*runs("b", range(3))))
    await node.snapshot()
    assert node.store.deltas() == [] and len(node.store.paths()) == 1
    assert pipelines_in(node.store.paths()[0]) == {f"p{i}" for i in range(50)}
    await node.close()


async def test_a_clean_stop_writes_a_delta_and_the_next_start_counts_the_same(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    many = runs("a", range(300))
    for i, r in enumerate(many):
        r.team = f"team-{i % 3}"
        r.pipeline_id = f"team-{i % 3}.p{i}"
    few = [run("b-1", "team-0.p0", "team-0"), run("b-2", "team-1.p1", "team-1", "failed")]

    async def send(target: str, executions: list) -> int:
        async with grpc.aio.insecure_channel(target) as channel:
            answer = await service_pb2_grpc.PipelineMonitorStub(channel).Ingest(
                request(*executions)
            )
            return int(answer.accepted)

    async def totals(target: str) -> list[int]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            out = []
            for team in ("team-0", "team-1", "team-2"):
                m = await stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team=team))
                out += [m.total_executions, m.failed, m.pipeline_count]
            return out

    first = ServerProcess(data)
    try:
        first.wait_serving()
        assert await send(first.target, many) == 300
    finally:
        assert first.stop() == 0  # a whole snapshot: there was none to build on
    second = ServerProcess(data)
    try:
        second.wait_serving()
        assert await send(second.target, few) == 2
        expected = await totals(second.target)
    finally:
        assert second.stop() == 0
    store = SnapshotStore(data / "snapshots")
    (_, _, delta), *_ = store.deltas()
    assert pipelines_in(delta) == {"team-0.p0", "team-1.p1"}
    assert "delta snapshot" in second.log()
    third = ServerProcess(data)
    try:
        third.wait_serving()
        assert await totals(third.target) == expected
        assert await send(third.target, few + many[:5]) == 0  # all duplicates
    finally:
        assert third.stop() == 0
    assert "a whole snapshot and 1 deltas" in third.log()


async def test_the_pipelines_changed_since_the_last_snapshot_are_counted(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.open()
    await node.ingest(request(*runs("a", range(50))))
    await node.ingest(request(*runs("b", range(5))))
    assert node.shards.changed == 50  # each pipeline once
    await node.snapshot()
    assert node.shards.changed == 0
    await node.ingest(
        request(*runs("c", range(2)), *runs("d", range(2)), *runs("e", range(60, 61)))
    )
    assert node.shards.changed == 3
    await node.snapshot()
    assert pipelines_in(node.store.deltas()[0][2]) == {"p0", "p1", "p60"}
    await node.close()


MAIN = Path(__file__).parent / "data" / "main-3bd02f0"  # written by commit 3bd02f0 (make.py)


def facts(node: Node) -> dict[str, Any]:
    """As make.py's: counts, records, failure streak, ring's runs, runs in flight."""
    return {
        p.pipeline_id: [
            p.succeeded,
            p.failed,
            p.cancelled,
            p.records_sum,
            p.consecutive_failures,
            [list(r) for r in p.ring.runs()],
            sorted(p.in_flight or ()),
        ]
        for p in sorted(node.shards.pipelines(), key=lambda p: p.pipeline_id)
    }


async def test_a_data_directory_of_the_release_before_deltas_starts_and_holds_the_same(
    tmp_path: Path,
) -> None:
    expected = json.loads((MAIN / "facts.json").read_text())
    shutil.copytree(MAIN / "v3", tmp_path / "data")
    node = Node(tmp_path / "data", segment_bytes=1 << 20)
    await node.open()
    assert facts(node) == expected
    # Its whole snapshot is the base of this release's first delta, which a start reads after it.
    outcome = await node.ingest(request(run("more-1", "sales.one", "sales", start=T0 + 60)))
    assert outcome.accepted == 1
    await node.snapshot()
    (_, parent, _), *_ = node.store.deltas()
    assert parent == int(node.store.paths()[0].stem) == 1
    later = facts(node)
    await node.close()
    again = Node(tmp_path / "data", segment_bytes=1 << 20)
    await again.open()
    assert facts(again) == later
    assert later["sales.one"][0] == expected["sales.one"][0] + 1
    await again.close()
