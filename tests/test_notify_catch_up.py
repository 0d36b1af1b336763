"""Catching the notifiers up: the feed subscription that leaves out events older than the state a
catch-up read, and the dispatcher's catch-up submit that never tells a receiver again what it was
told."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from notifiers.dispatcher import Dispatcher
from server.alerting.feed import AlertFeed
from server.alerting.model import (
    CRITICAL,
    FIRED,
    FIRING,
    RESOLVED,
    RESOLVED_EVENT,
    Alert,
    AlertEvent,
)
from server.eventlog import MemoryLog
from tests.alert_events import event as alert_event
from tests.alerting import Clock

T0 = 1_780_000_000.0
NOW = T0 + 3600


def alert(alert_id: str = "a1", **kw: Any) -> Alert:
    fields: dict[str, Any] = {"severity": CRITICAL, "notified": True, "state": FIRING, **kw}
    return Alert(alert_id, "p1", "team", 4, message="5 failures in a row", observed=5,
                 expected=0, first_seen=T0, last_seen=T0, **fields)  # fmt: skip


def event(type_: int, a: Alert, at: float = T0 + 60, previous: int = 0) -> AlertEvent:
    return AlertEvent(type_, a.copy(), at, True, previous, f"reason {type_}")


async def test_a_subscription_after_a_record_leaves_out_the_events_of_older_ones() -> None:
    feed = AlertFeed(MemoryLog())
    old, new = event(FIRED, alert()), event(RESOLVED_EVENT, alert(state=RESOLVED))
    feed.publish(5, [old])  # published, not yet delivered
    caught_up = feed.subscribe(maxsize=10, after=5)
    everything = feed.subscribe(maxsize=10)
    feed.publish(6, [new])
    feed.start()
    async with asyncio.timeout(2):
        assert await caught_up.get() == new
        assert [await everything.get(), await everything.get()] == [old, new]
    assert caught_up.pending() == 0
    await feed.close()


async def test_a_catch_up_never_tells_again_what_a_receiver_was_told(tmp_path: Path) -> None:
    clock = Clock(T0)
    out = io.StringIO()
    d = Dispatcher(data_dir=tmp_path / "data", clock=clock, console=out)  # the console receiver
    await d.start()
    try:
        assert len(d.submit(alert_event("a1", "critical"))) == 1
        assert d.unresolved() == {"a1"}
        clock.advance(5 * 3600)  # past the repeat interval (4 h)
        # Restated: the console was told this severity and state, however long ago.
        assert d.submit(alert_event("a1", "critical"), catch_up=True) == []
        # Changed, or never told: told.
        assert len(d.submit(alert_event("a1", "critical", "acknowledged"), catch_up=True)) == 1
        assert len(d.submit(alert_event("a2", "high"), catch_up=True)) == 1
        # The repeat of an unchanged alert still goes out when it is not a catch-up.
        assert len(d.submit(alert_event("a2", "high"))) == 0
        assert len(d.submit(alert_event("a1", "critical", "acknowledged"))) == 0
        clock.advance(5 * 3600)
        assert len(d.submit(alert_event("a2", "high"))) == 1
        assert len(d.submit(alert_event("a1", "critical", "resolved"), catch_up=True)) == 1
        assert d.unresolved() == {"a2"}
        assert await d.drain(5)
    finally:
        await d.close()
    assert len(out.getvalue().splitlines()) == 5
