"""Duplicate detection's memory is bounded by count and by event-time age."""

from __future__ import annotations

from server.dedup import CHUNK, SeenExecutions


def test_forgets_the_oldest_beyond_capacity() -> None:
    seen = SeenExecutions(capacity=3)
    for i in range(5):
        seen.add(f"e{i}", float(i))
    assert list(seen) == ["e2", "e3", "e4"]
    assert "e1" not in seen and "e4" in seen
    assert len(seen) == 3


def test_forgets_whole_chunks_older_than_the_retention() -> None:
    day = 86400.0
    seen = SeenExecutions(capacity=10**9, retention_seconds=7 * day)
    for i in range(CHUNK):
        seen.add(f"old{i}", 0.0)
    for i in range(CHUNK):
        seen.add(f"mid{i}", 5 * day)
    assert len(seen) == 2 * CHUNK
    seen.add("new", 7 * day + 1)  # the first chunk is now past retention
    assert "old0" not in seen and f"old{CHUNK - 1}" not in seen
    assert "mid0" in seen and "new" in seen
    assert len(seen) == CHUNK + 1


def test_chunks_round_trip_through_restore() -> None:
    seen = SeenExecutions(capacity=10**9, retention_seconds=100.0)
    for i in range(CHUNK + 10):
        seen.add(f"e{i}", float(i % 50))
    copy = SeenExecutions(capacity=10**9, retention_seconds=100.0)
    copy.restore(seen.chunks())
    assert list(copy) == list(seen)
    assert [t for _, t in copy.chunks()] == [t for _, t in seen.chunks()]
