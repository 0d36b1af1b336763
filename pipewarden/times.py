"""Times between Python and protobuf, written once for the client and the server.

The range is google.protobuf.Timestamp's documented one, 0001-01-01T00:00:00Z to
9999-12-31T23:59:59.999999999Z: the server refuses client times outside it, and `timestamp`
never makes one outside it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["MAX_SECONDS", "MIN_SECONDS", "seconds", "timestamp"]

MIN_SECONDS: Final = -62_135_596_800
"""0001-01-01T00:00:00Z, the earliest Timestamp a client may send."""
MAX_SECONDS: Final = 253_402_300_799
"""9999-12-31T23:59:59Z, the latest whole second a client may send."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(t: float | datetime) -> Timestamp:
    """A Timestamp for Unix seconds `t` (to the nearest nanosecond), or for a datetime (exact;
    one without a zone is UTC), within Timestamp's range whatever `t` is. Client times are
    checked against that range when they arrive, but float seconds may round the last instant
    of year 9999 up into year 10000, and a response, a log record or a snapshot must never fail
    to encode because of one time (a NaN counts as the latest)."""
    if isinstance(t, datetime):
        since = (t if t.tzinfo is not None else t.replace(tzinfo=UTC)) - _EPOCH
        return Timestamp(
            seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000
        )
    if not MIN_SECONDS <= t < MAX_SECONDS + 1:
        return Timestamp(seconds=MIN_SECONDS) if t < MIN_SECONDS else _latest()
    whole = math.floor(t)
    nanos = round((t - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
        if whole > MAX_SECONDS:
            return _latest()
    return Timestamp(seconds=whole, nanos=nanos)


def _latest() -> Timestamp:
    return Timestamp(seconds=MAX_SECONDS, nanos=999_999_999)


def seconds(ts: Timestamp) -> float:
    """Unix seconds of a Timestamp."""
    return ts.seconds + ts.nanos / 1e9
