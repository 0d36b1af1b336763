"""Times to and from protobuf (pipewarden/times.py), for the client and the server alike."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from pipewarden.client import execution
from pipewarden.times import MAX_SECONDS, MIN_SECONDS, seconds, timestamp

LATEST = Timestamp(seconds=MAX_SECONDS, nanos=999_999_999)


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (0.0, Timestamp()),
        (1.5, Timestamp(seconds=1, nanos=500_000_000)),
        (-1.25, Timestamp(seconds=-2, nanos=750_000_000)),
        (MIN_SECONDS - 1.0, Timestamp(seconds=MIN_SECONDS)),
        (MAX_SECONDS + 0.9999999999, LATEST),  # rounds up into year 10000: the latest
        (float("inf"), LATEST),
        (float("-inf"), Timestamp(seconds=MIN_SECONDS)),
        (float("nan"), LATEST),
    ],
)
def test_timestamp_of_float_seconds(t: float, expected: Timestamp) -> None:
    assert timestamp(t) == expected


@given(st.floats(min_value=MIN_SECONDS, max_value=MAX_SECONDS))
def test_float_seconds_survive_the_round_trip(t: float) -> None:
    ts = timestamp(t)
    assert 0 <= ts.nanos <= 999_999_999
    assert math.isclose(seconds(ts), t, rel_tol=1e-15, abs_tol=1e-9)


def test_a_datetime_is_exact_and_one_without_a_zone_is_utc() -> None:
    moment = datetime(2026, 11, 26, 8, 0, 0, 123_456, tzinfo=UTC)
    assert timestamp(moment) == Timestamp(seconds=1_795_680_000, nanos=123_456_000)
    assert timestamp(moment.replace(tzinfo=None)) == timestamp(moment)
    east = moment.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert timestamp(east) == timestamp(moment)


def test_the_client_builds_executions_with_the_same_times() -> None:
    moment = datetime(2026, 11, 26, 8, 0, 0, 123_456, tzinfo=UTC)
    e = execution("e1", "p", "t", "succeeded", started_at=moment, finished_at=1_795_680_060.5)
    assert e.started_at == timestamp(moment)
    assert e.finished_at == Timestamp(seconds=1_795_680_060, nanos=500_000_000)
