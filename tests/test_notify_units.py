"""The pure parts of delivery, table-driven: backoff, the token bucket, the notification log;
and every notifier module declares its public names."""

from __future__ import annotations

import asyncio
import random

import pytest

from pipewarden.notifiers.nflog import NotificationLog
from pipewarden.notifiers.ratelimit import TokenBucket
from pipewarden.notifiers.retry import Backoff


def test_backoff_doubles_with_jitter_and_honours_retry_after() -> None:
    b = Backoff(1.0, 8.0, random.Random(1))
    for failures, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        for _ in range(20):
            assert step / 2 <= b.delay(failures) <= step
    assert b.delay(1, retry_after=30.0) == 30.0


async def test_token_bucket_paces_and_holds() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=2, clock=lambda: now[0])
    await bucket.acquire()
    await bucket.acquire()
    assert bucket.wait_time() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.wait_time() == 0.0
    bucket.hold(10.0)
    assert bucket.wait_time() == pytest.approx(10.0)
    unlimited = TokenBucket(rate=0.0, burst=1)
    async with asyncio.timeout(1):
        for _ in range(1000):
            await unlimited.acquire()


FIRING, ACKED, RESOLVED = 1, 2, 3
CASES = [
    # (previous (severity, state, sent_at) or None, now (severity, state, time), due?)
    (None, (3, FIRING, 0.0), True),
    ((3, FIRING, 0.0), (3, FIRING, 10.0), False),
    ((3, FIRING, 0.0), (3, FIRING, 100.0), True),  # repeat interval (100) passed
    ((2, FIRING, 0.0), (3, FIRING, 10.0), True),  # severity changed
    ((3, FIRING, 0.0), (3, ACKED, 10.0), True),  # state changed
    ((3, RESOLVED, 0.0), (3, FIRING, 10.0), True),  # fired again
]


@pytest.mark.parametrize(("before", "after", "due"), CASES)
def test_notification_log_dedup(
    before: tuple[int, int, float] | None, after: tuple[int, int, float], due: bool
) -> None:
    nflog = NotificationLog()
    if before is not None:
        nflog.record("a", "r", *before)
    assert nflog.due("a", "r", *after, repeat_interval=100.0) is due
    assert nflog.due("a", "other", *after, repeat_interval=100.0)


def test_notification_log_prunes_only_old_resolved_entries() -> None:
    nflog = NotificationLog()
    nflog.record("open", "r", 3, FIRING, 0.0)
    nflog.record("done", "r", 3, RESOLVED, 0.0)
    nflog.record("recent", "r", 3, RESOLVED, 90.0)
    assert nflog.prune(now=100.0, resolved_retention=50.0) == 1
    assert nflog.told("open") == ("r",) and nflog.told("done") == () and len(nflog) == 2
