"""Unit tests of the sharded state: the pure core, table-driven."""

from __future__ import annotations

import math
import zlib
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipewarden.server.core.model import CANCELLED, FAILED, RUNNING, SUCCEEDED, Execution
from pipewarden.server.core.shards import (
    Ring,
    ShardSet,
    dump_pipeline,
    encode_pipeline,
    encode_shard_part,
    shard_of,
)
from pipewarden.storage.v1 import storage_pb2


def _e(
    eid: str, status: int, t: float, duration: float | None = 1.0, records: int = 1
) -> Execution:
    return Execution(eid, "p", "team", status, t - 1, t, duration, records, (), {}, "", t)


def test_shard_of_is_a_stable_hash() -> None:
    # CRC-32 of the id's UTF-8 bytes: the same in every process, unlike hash().
    assert shard_of("payments.settle", 16) == zlib.crc32(b"payments.settle") % 16
    assert shard_of("payments.settle", 16) == 5  # pinned: moving it would move data
    assert {shard_of(f"p{i}", 8) for i in range(200)} == set(range(8))


def test_ring_keeps_the_latest_runs_oldest_first() -> None:
    ring = Ring(3)
    for i in range(5):
        ring.push(SUCCEEDED if i % 2 else FAILED, None if i == 4 else float(i), i * 10, 100.0 + i)
    assert ring.count == 3
    assert ring.runs() == [
        (FAILED, 2.0, 20, 102.0),
        (SUCCEEDED, 3.0, 30, 103.0),
        (FAILED, None, 40, 104.0),
    ]
    assert math.isnan(ring.duration[(ring.position - 1) % 3])


@pytest.mark.parametrize(
    ("events", "streak"),
    [
        ([(FAILED, 10), (FAILED, 20)], 2),
        ([(FAILED, 10), (SUCCEEDED, 20), (FAILED, 30)], 1),
        ([(SUCCEEDED, 10), (FAILED, 10)], 1),  # same time: the later arrival is after
        ([(FAILED, 10), (SUCCEEDED, 10)], 0),
        ([(FAILED, 10), (FAILED, 30), (SUCCEEDED, 20)], 1),  # late success in between
        ([(SUCCEEDED, 20), (FAILED, 10)], 0),  # late failure before the success
        ([(FAILED, 10), (CANCELLED, 20), (FAILED, 30)], 2),  # cancelled runs do not break it
    ],
)
def test_consecutive_failures_by_event_time(events: list[tuple[int, float]], streak: int) -> None:
    shards = ShardSet(4, window=16)
    shard = shards.shard_for("p")
    state = shards.create("p", "team")
    for i, (status, t) in enumerate(events):
        shard.apply_terminal(state, _e(f"e{i}", status, t))
    assert state.consecutive_failures == streak


def test_failing_pipelines_follow_the_latest_status() -> None:
    shards = ShardSet(2, window=8)
    shard = shards.shard_for("p")
    state = shards.create("p", "team")
    shard.apply_terminal(state, _e("a", FAILED, 10))
    assert shards.team_totals("team").failing == 1  # type: ignore[union-attr]
    shard.apply_terminal(state, _e("b", FAILED, 5))  # older: the latest is still a failure
    shard.apply_terminal(state, _e("c", SUCCEEDED, 20))
    assert shards.team_totals("team").failing == 0  # type: ignore[union-attr]


def test_restore_into_another_window_keeps_the_latest_runs() -> None:
    shards = ShardSet(1, window=8)
    shard = shards.shard_for("p")
    state = shards.create("p", "team")
    for i in range(6):
        shard.apply_terminal(state, _e(f"e{i}", SUCCEEDED, float(i), duration=float(i)))
    smaller = ShardSet(1, window=4)
    smaller.restore(shards.dump())
    restored = smaller.get("p")
    assert restored is not None
    assert [r[1] for r in restored.ring.runs()] == [2.0, 3.0, 4.0, 5.0]
    assert restored.total == 6


@pytest.mark.parametrize("runs", [0, 1, 5, 7, 8, 9, 20])
def test_a_ring_not_yet_full_is_written_as_its_slots_in_use_and_read_back_whole(
    runs: int,
) -> None:
    shards = ShardSet(1, window=8)
    shard = shards.shard_for("p")
    state = shards.create("p", "team")
    for i in range(runs):
        status = FAILED if i % 3 == 0 else SUCCEEDED
        shard.apply_terminal(state, _e(f"e{i}", status, float(i), duration=float(i), records=i))
    (snap,) = shards.dump()
    ring = snap.pipelines[0].ring
    assert ring.size == 8 and len(ring.status) == (max(runs, 1) if runs < 8 else 8)
    assert len(ring.time) == 8 * len(ring.status)
    expected = state.ring.runs()
    for window in (8, 4, 16):  # its own size, and the refill a reader without this does
        again = ShardSet(2, window=window)
        again.restore([snap])
        restored = again.get("p")
        assert restored is not None
        assert len(restored.ring.status) == window
        assert restored.ring.runs() == expected[-window:]
    # Restored into its own size, it goes on as the original does.
    assert restored is not None
    again = ShardSet(1, window=8)
    again.restore([snap])
    restored = again.get("p")
    assert restored is not None
    for ring in (restored.ring, state.ring):
        ring.push(SUCCEEDED, 1.0, 1, 99.0)
    assert restored.ring.runs() == state.ring.runs()
    assert (restored.ring.position, restored.ring.count) == (state.ring.position, state.ring.count)


def _walk(shards: ShardSet, team: str, size: int) -> list[str]:
    """Every pipeline id that paging gives, page by page."""
    out: list[str] = []
    after = ""
    while True:
        page, more = shards.page(team, after, size)
        out += [p.pipeline_id for p in page]
        if not more:
            assert len(page) <= size
            return out
        assert len(page) == size
        after = page[-1].pipeline_id


@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=6), st.sampled_from(["a", "b", "c"])),
        unique_by=lambda x: x[0],
        max_size=80,
    ),
    st.integers(1, 7),
)
def test_paging_walks_every_id_in_order_after_inserts_and_after_restore(
    pipelines: list[tuple[str, str]], size: int
) -> None:
    shards = ShardSet(3, 4)
    for pid, team in pipelines:  # in no particular order, as pipelines appear
        shards.create(pid, team)
    restored = ShardSet(5, 4)  # another shard count: pipelines are re-spread
    restored.restore(shards.dump())
    for state in (shards, restored):
        assert len(state) == len(pipelines)
        assert _walk(state, "", size) == sorted(pid for pid, _ in pipelines)
        for team in ("a", "b", "c", "unknown"):
            mine = sorted(pid for pid, t in pipelines if t == team)
            assert _walk(state, team, size) == mine
            assert state.team_pipeline_count(team) == len(mine)
        assert state.teams() == sorted({t for _, t in pipelines})


@given(
    st.lists(
        st.tuples(
            st.sampled_from([SUCCEEDED, FAILED, CANCELLED, RUNNING]),
            st.one_of(st.none(), st.floats(0, 1e6)),
            st.integers(-(2**40), 2**40),
            st.floats(-1e10, 1e10),
        ),
        max_size=40,
    ),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.lists(st.text(max_size=8), max_size=3),
    st.text(max_size=20),
    st.integers(1, 70),
    st.integers(0, 5),
)
def test_a_pipeline_encoded_by_hand_is_the_message_dump_pipeline_makes(
    events: list[tuple[int, float | None, int, float]],
    labels: dict[str, str],
    upstream: list[str],
    pipeline_id: str,
    window: int,
    index: int,
) -> None:
    shards = ShardSet(1, window=window)
    shard = shards.shards[0]
    state = shards.create(pipeline_id, "tëam")
    for i, (status, duration, records, t) in enumerate(events):
        e = Execution(
            f"e{i}", pipeline_id, "tëam", status, t - 1, t, duration, records,
            tuple(upstream), labels, "bóom" if status == FAILED else "", t,
        )  # fmt: skip
        if status == RUNNING:
            shard.apply_running(state, e)
        else:
            shard.apply_terminal(state, e)
    if events:
        state.last_received = events[-1][3]
        state.profile = array("f", [float(i) for i in range(window)])
        state.profile_at = len(events)
    encoded = encode_pipeline(state)
    assert storage_pb2.PipelineSnapshot.FromString(encoded) == dump_pipeline(state)
    part = storage_pb2.ShardSnapshot.FromString(encode_shard_part(index, [encoded, encoded]))
    assert part == storage_pb2.ShardSnapshot(index=index, pipelines=[dump_pipeline(state)] * 2)
