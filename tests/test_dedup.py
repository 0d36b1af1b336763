"""Duplicate detection's memory: keyed by pipeline and execution id, bounded by count (fairly
between teams) and by the age of what was received."""

from __future__ import annotations

from pathlib import Path

import crc32c
import grpc
import pytest

from pipewarden.server.core.dedup import (
    CHUNK,
    PROBES,
    ImageBuilder,
    Remembered,
    SeenExecutions,
    key,
)
from pipewarden.v1 import service_pb2_grpc
from tests.support.durability import Node
from tests.support.helpers import request, run, until
from tests.support.process import ServerProcess


def test_forgets_the_oldest_beyond_capacity() -> None:
    seen = SeenExecutions(capacity=3)
    for i in range(5):
        seen.add("a", f"e{i}", float(i))
    assert list(seen) == ["e2", "e3", "e4"]
    assert "e1" not in seen and "e4" in seen
    assert len(seen) == 3


def test_forgets_whole_chunks_received_longer_ago_than_the_retention() -> None:
    day = 86400.0
    seen = SeenExecutions(capacity=10**9, retention_seconds=7 * day)
    for i in range(CHUNK):
        seen.add("a", f"old{i}", 0.0)
    for i in range(CHUNK):
        seen.add("a", f"mid{i}", 5 * day)
    assert len(seen) == 2 * CHUNK
    seen.add("b", "new", 7 * day + 1)  # the first chunk is now past retention
    assert "old0" not in seen and f"old{CHUNK - 1}" not in seen
    assert "mid0" in seen and "new" in seen
    assert len(seen) == CHUNK + 1
    assert (seen.held("a"), seen.held("b")) == (CHUNK, 1)


def test_the_key_is_the_pipeline_and_the_id_together_and_unambiguous() -> None:
    assert key("sales.orders", "run-1") != key("sales.refunds", "run-1")
    assert key("ab", "c") != key("a", "bc")  # a plain join would make these one
    assert len({key(p, e) for p in ("", "1", "1:", ":") for e in ("", "1", ":1")}) == 12


@pytest.mark.parametrize(
    ("held", "excess", "kept"),
    [
        # The largest team alone gives way while it stays the largest.
        ({"a": 10, "b": 3}, 5, {"a": 5, "b": 3}),
        # Down to a common level; of equal teams, the one first in the table keeps one more.
        ({"a": 6, "b": 5, "c": 5}, 3, {"a": 5, "b": 4, "c": 4}),
        ({"a": 5, "b": 5}, 1, {"a": 5, "b": 4}),
        ({"a": 9, "b": 1, "c": 4}, 8, {"a": 3, "b": 1, "c": 2}),
        # A team holding no more than its fair share keeps everything.
        ({"flood": 1000, "a": 20, "b": 30}, 950, {"flood": 50, "a": 20, "b": 30}),
    ],
)
def test_beyond_capacity_the_teams_that_hold_the_most_forget_first(
    held: dict[str, int], excess: int, kept: dict[str, int]
) -> None:
    seen = SeenExecutions(capacity=sum(held.values()) - excess)
    chunks = [(team, [f"{team}-{i}" for i in range(count)], 1.0) for team, count in held.items()]
    seen.restore(chunks)  # once over capacity, by `excess`
    assert len(seen) == seen.capacity
    for team, count in kept.items():
        assert seen.held(team) == count
        # Each team loses its oldest first.
        assert all(f"{team}-{i}" in seen for i in range(held[team] - count, held[team]))
        assert not any(f"{team}-{i}" in seen for i in range(held[team] - count))


def test_one_team_flooding_ids_never_takes_another_teams_recent_ids() -> None:
    seen = SeenExecutions(capacity=1000, chunk=64)
    a = [key("a.p", f"run-{i}") for i in range(300)]
    seen.add_batch("a", a, 1.0)
    for n in range(50):  # 5,000 ids of team b, in requests of 100
        seen.add_batch("b", [key("b.p", f"flood-{n}-{i}") for i in range(100)], 2.0 + n)
    assert all(k in seen for k in a)
    assert (seen.held("a"), seen.held("b")) == (300, 700)


def test_chunks_round_trip_through_restore() -> None:
    seen = SeenExecutions(capacity=10**9, retention_seconds=100.0)
    for i in range(CHUNK + 10):
        seen.add("ab"[i % 2], f"e{i}", float(i % 50))
    copy = SeenExecutions(capacity=10**9, retention_seconds=100.0)
    copy.restore(seen.chunks())
    assert list(copy) == list(seen)
    assert copy.chunks() == seen.chunks()


def _colliding(count: int, mask: int, pipeline: str | None = None) -> list[str]:
    """Ids whose CRC-32C (of their key in `pipeline`, when given) all fall in table slot 0
    under `mask` (found by trying)."""
    found: list[str] = []
    i = 0
    while len(found) < count:
        candidate = f"clash-{i}"
        text = candidate if pipeline is None else key(pipeline, candidate)
        if crc32c.crc32c(text.encode()) & mask == 0:
            found.append(candidate)
        i += 1
    return found


def _compact(seen: SeenExecutions) -> Remembered:
    builder = ImageBuilder(seen)
    slices = list(builder.steps(step=16))
    assert slices == sorted(slices) and len(slices) >= len(seen) // 16
    return builder.result


def test_ids_made_to_collide_are_found_past_the_probe_limit() -> None:
    clash = _colliding(PROBES + 28, mask=127)  # 60 ids: a table of 128 slots
    others = _colliding(2 * PROBES + 38, mask=127)[len(clash) :]
    seen = SeenExecutions(capacity=10**9)
    seen.add_batch("a", clash, 1.0)
    image = _compact(seen)
    assert len(image.table) == 128
    assert sorted(image.overflow.values()) == list(range(PROBES, PROBES + 28))
    restored = SeenExecutions(capacity=len(clash))
    restored.restore(image)
    assert all(x in restored for x in clash)
    assert not any(x in restored for x in others)  # same slot: the probe limit, then the dict
    # Forgetting by count moves past entries in the table and in the overflow alike.
    restored.add_batch("a", others[: PROBES + 5], 2.0)
    gone = clash[: PROBES + 5]
    assert not any(x in restored for x in gone)
    assert all(x in restored for x in clash[PROBES + 5 :])
    assert list(restored) == clash[PROBES + 5 :] + others[: PROBES + 5]


async def test_the_compact_form_round_trips_through_a_snapshot_file(tmp_path: Path) -> None:
    clash = _colliding(PROBES + 8, mask=127, pipeline="p1")
    node = Node(tmp_path)
    await node.open()
    await node.ingest(request(*(run(x) for x in clash), run("héllo ✓"), run("a\nb")))
    await node.snapshot()
    await node.close()
    again = Node(tmp_path)
    await again.open()
    restored = again.seen.restored
    assert restored is not None and len(restored.overflow) >= 1
    assert list(again.seen) == [key("p1", x) for x in [*clash, "héllo ✓", "a\nb"]]
    outcome = await again.ingest(request(*(run(x) for x in clash), run("a\nb"), run("new")))
    assert outcome.duplicates == len(clash) + 1 and outcome.accepted == 1
    # A second snapshot writes the restored ids and the new ones together.
    await again.snapshot()
    await again.close()
    third = Node(tmp_path)
    await third.open()
    assert list(third.seen) == [key("p1", x) for x in [*clash, "héllo ✓", "a\nb", "new"]]
    await third.close()


async def test_a_real_restart_counts_each_id_once_before_and_after_the_ids_settle(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data)
    server.wait_serving()
    ids = [f"id-{i}" for i in range(3000)]
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)
        answer = await stub.Ingest(request(*(run(x, f"p{i % 7}") for i, x in enumerate(ids))))
        assert answer.accepted == len(ids)
    assert server.stop() == 0  # SIGTERM: a snapshot with the ids in their compact form
    again = ServerProcess(data)
    again.wait_serving()
    try:
        async with grpc.aio.insecure_channel(again.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            # At once: some of these may be checked against the compact form, some against
            # the live set, as the ids settle between requests.
            for k in range(0, len(ids), 500):
                resent = [run(x, f"p{(k + i) % 7}") for i, x in enumerate(ids[k : k + 500])]
                answer = await stub.Ingest(request(*resent, run(f"new-{k}", "p0")))
                assert (answer.accepted, answer.duplicates) == (1, 500)
            await until(lambda: "restored from the snapshot are in the live set" in again.log())
            answer = await stub.Ingest(request(*(run(x, "p0") for x in ids[::7]), run("new")))
            assert (answer.accepted, answer.duplicates) == (1, len(ids[::7]))
    finally:
        again.stop()
    assert "3000 execution ids restored from the snapshot are in the live set" in again.log()


def test_chunks_emptied_behind_another_teams_are_dropped() -> None:
    """A flood's chunks, emptied by count behind a quiet team's older chunk (which keeps the
    queue from being cut at its front), do not pile up."""
    seen = SeenExecutions(capacity=100, chunk=4)
    seen.add_batch("quiet", ["q-0", "q-1"], 0.0)
    for n in range(10_000):
        seen.add_batch("flood", [f"f-{n}-0", f"f-{n}-1", f"f-{n}-2", f"f-{n}-3"], 1.0 + n)
    assert (seen.held("quiet"), seen.held("flood")) == (2, 98)
    assert len(seen._chunks) <= 64 + 2 * (98 // 4 + 2)
    assert list(seen)[:2] == ["q-0", "q-1"] and "f-9999-3" in seen and "f-9974-3" not in seen
    assert seen.chunks() == [
        ("quiet", ["q-0", "q-1"], 0.0),
        ("flood", ["f-9975-2", "f-9975-3"], 9976.0),
        *(("flood", [f"f-{n}-{i}" for i in range(4)], 1.0 + n) for n in range(9976, 10_000)),
    ]
