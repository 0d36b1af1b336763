"""Snapshots: consistent while ingestion goes on, fallback past a corrupt one, and a stateful
property test that interleaves ingest, snapshot, crash and recovery against a model."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pipewarden.server.base.errors import CorruptLogError
from pipewarden.server.core.dedup import key
from tests.support.durability import Node
from tests.support.helpers import T0, request, run


def fleet_batch(tag: str, n: int, pipelines: int = 30) -> list:
    return [
        run(
            f"{tag}-{i}",
            f"p{i % pipelines}",
            status="failed" if i % 5 == 0 else "succeeded",
            start=T0 + i,
            records=i,
        )
        for i in range(n)
    ]


async def test_a_snapshot_taken_during_ingestion_is_the_state_at_its_start(tmp_path: Path) -> None:
    node = Node(tmp_path / "a")
    await node.open()
    await node.ingest(request(*fleet_batch("a", 3000)))
    before = node.state()
    seq_before = node.wal.last_seq

    async def keep_ingesting() -> None:
        for k in range(40):
            await node.ingest(request(*fleet_batch(f"b{k}", 20)))
            await asyncio.sleep(0)

    await asyncio.gather(node.snapshot(), keep_ingesting())
    after = node.state()
    assert after != before
    loaded = node.store.load_latest()
    assert loaded is not None and loaded.seq == seq_before
    # The snapshot is exactly the state when it began, though the pipelines changed meanwhile.
    probe = Node(tmp_path / "probe")
    probe.shards.restore(loaded.shards)
    assert probe.state() == before
    await node.close()
    # And recovery (snapshot, then the log after it) gives the state at the end.
    again = Node(tmp_path / "a")
    await again.open()
    assert again.state() == after
    await again.close()


async def test_a_corrupt_newest_snapshot_falls_back_to_the_older_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(tmp_path)
    await node.open()
    for k in range(3):
        await node.ingest(request(*fleet_batch(f"k{k}", 300)))
        await node.snapshot()
    await node.ingest(request(*fleet_batch("tail", 50)))
    expected = node.state()
    await node.close()
    snaps = node.store.paths()
    assert len(snaps) == 2
    data = bytearray(snaps[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    snaps[0].write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = Node(tmp_path)
        await again.open()
    assert "unusable" in caplog.text and snaps[0].name in caplog.text
    assert again.state() == expected
    await again.close()

    # A torn snapshot (the END frame missing) is refused just the same.
    snaps[0].write_bytes(snaps[1].read_bytes()[:-20])
    third = Node(tmp_path)
    await third.open()
    assert third.state() == expected
    await third.close()


async def test_missing_log_behind_unusable_snapshots_stops_the_start(tmp_path: Path) -> None:
    node = Node(tmp_path, segment_bytes=1024)
    await node.open()
    for k in range(4):
        await node.ingest(request(*fleet_batch(f"k{k}", 100)))
        await node.snapshot()
    await node.close()
    assert node.wal.first_seq > 1  # old segments were deleted
    for snap in node.store.paths():
        snap.write_bytes(b"garbage")
    with pytest.raises(CorruptLogError):
        await Node(tmp_path).open()


executions = st.lists(
    st.tuples(
        st.integers(0, 40),  # execution id: small, so duplicates happen
        st.integers(0, 5),  # pipeline
        st.sampled_from(["succeeded", "failed", "cancelled", "running"]),
        st.integers(0, 1000),
    ),
    min_size=1,
    max_size=6,
)


class DurabilityMachine(RuleBasedStateMachine):
    """Every acknowledged terminal execution is counted exactly once, through any interleaving
    of ingestion, snapshots, crashes and clean restarts."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="pw-stateful-"))
        self.node = Node(self.dir, segment_bytes=512)
        self.loop.run_until_complete(self.node.open())
        # (pipeline, id) -> status, records: an execution is its pipeline and id together
        self.model: dict[tuple[str, str], tuple[str, int]] = {}

    @rule(batch=executions)
    def ingest(self, batch: list[tuple[int, int, str, int]]) -> None:
        msgs = [
            run(f"e{i}", f"p{p}", status=status, records=records) for i, p, status, records in batch
        ]
        self.loop.run_until_complete(self.node.ingest(request(*msgs)))
        for i, p, status, records in batch:
            if status != "running" and (f"p{p}", f"e{i}") not in self.model:
                self.model[f"p{p}", f"e{i}"] = (status, records)

    @rule(batch=executions)
    def ingest_unacknowledged_then_crash(self, batch: list[tuple[int, int, str, int]]) -> None:
        msgs = [run(f"u{i}", f"p{p}", status=s, records=r) for i, p, s, r in batch]
        req = request(*msgs)
        self.node.ingestor.ingest(req.SerializeToString(), req)  # appended, never awaited
        self.crash()

    @rule()
    def snapshot(self) -> None:
        self.loop.run_until_complete(self.node.snapshot())

    @rule()
    def crash(self) -> None:
        self.node.crash()
        self.node = Node(self.dir, segment_bytes=512)
        self.loop.run_until_complete(self.node.open())

    @precondition(lambda self: True)
    @rule()
    def clean_restart(self) -> None:
        self.loop.run_until_complete(self.node.close())
        self.node = Node(self.dir, segment_bytes=512)
        self.loop.run_until_complete(self.node.open())

    @invariant()
    def counted_exactly_once(self) -> None:
        want: dict[str, list[int]] = {}
        for (pipeline, _), (status, records) in self.model.items():
            row = want.setdefault(pipeline, [0, 0, 0, 0])
            row[{"succeeded": 0, "failed": 1, "cancelled": 2}[status]] += 1
            if status != "cancelled":
                row[3] += records
        got = {pid: list(t) for pid, t in self.node.totals().items() if any(t)}
        assert got == want

    def teardown(self) -> None:
        try:
            self.loop.run_until_complete(self.node.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


DurabilityMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None
)
test_durability_against_a_model = DurabilityMachine.TestCase


async def test_remembered_ids_survive_a_snapshot_even_with_newlines(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.open()
    odd = "line one\nline two"
    await node.ingest(request(run("plain-1"), run(odd), run("plain-2")))
    await node.snapshot()
    await node.close()
    chunks = node.store.load_latest()
    assert chunks is not None
    again = Node(tmp_path)
    await again.open()
    assert list(again.seen) == [key("p1", x) for x in ("plain-1", odd, "plain-2")]
    outcome = await again.ingest(request(run(odd), run("plain-2")))
    assert outcome.duplicates == 2
    await again.close()
