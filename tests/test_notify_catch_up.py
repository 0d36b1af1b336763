"""Catching the notifiers up: which alerts are restated, as which events (table-driven, pure), and
the feed subscription that leaves out events older than the state a catch-up read, and the
dispatcher's catch-up submit that never tells a receiver again what it was told."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest

from pipewarden.notifiers import metrics
from pipewarden.notifiers.config import parse_receivers, parse_routes
from pipewarden.notifiers.dispatcher import Dispatcher
from pipewarden.server.alerting.feed import AlertFeed
from pipewarden.server.alerting.model import (
    ACKNOWLEDGED,
    ACKNOWLEDGED_EVENT,
    CRITICAL,
    ESCALATED,
    FIRED,
    FIRING,
    HIGH,
    REPEATED,
    RESOLVED,
    RESOLVED_EVENT,
    Alert,
    AlertEvent,
)
from pipewarden.server.partition.notifier import catch_up_events
from pipewarden.server.storage.eventlog import MemoryLog
from tests.support.alert_events import event as alert_event
from tests.support.alerting import Clock

T0 = 1_780_000_000.0
NOW = T0 + 3600


def alert(alert_id: str = "a1", **kw: Any) -> Alert:
    fields: dict[str, Any] = {"severity": CRITICAL, "notified": True, "state": FIRING, **kw}
    return Alert(alert_id, "p1", "team", 4, message="5 failures in a row", observed=5,
                 expected=0, first_seen=T0, last_seen=T0, **fields)  # fmt: skip


def event(type_: int, a: Alert, at: float = T0 + 60, previous: int = 0) -> AlertEvent:
    return AlertEvent(type_, a.copy(), at, True, previous, f"reason {type_}")


CASES: list[tuple[str, Alert, set[str], int | None]] = [
    ("firing, told", alert(), set(), FIRED),
    ("firing, never told (muted when it fired)", alert(notified=False), set(), None),
    ("firing, silenced now", alert(silenced=True), {"a1"}, None),
    ("firing, explained upstream now", alert(caused_by="up"), {"a1"}, None),
    ("acknowledged, some receiver told", alert(state=ACKNOWLEDGED), {"a1"}, ACKNOWLEDGED_EVENT),
    ("acknowledged, nobody told", alert(state=ACKNOWLEDGED), set(), None),
    ("resolved, some receiver not told so", alert(state=RESOLVED), {"a1"}, RESOLVED_EVENT),
    ("resolved, every receiver told so", alert(state=RESOLVED), set(), None),
    ("resolved while silenced, told it fired", alert(state=RESOLVED, silenced=True), {"a1"},
     RESOLVED_EVENT),
]  # fmt: skip


@pytest.mark.parametrize(("case", "a", "unresolved", "expected"), CASES, ids=[c[0] for c in CASES])
def test_which_alerts_are_restated(
    case: str, a: Alert, unresolved: set[str], expected: int | None
) -> None:
    events = catch_up_events([a], [], unresolved, NOW)
    if expected is None:
        assert events == []
    else:
        (restated,) = events
        assert restated.type == expected and restated.notify
        assert restated.alert == a and restated.alert is not a  # a copy, as it is now
        assert restated.time == NOW


def test_the_latest_event_gives_type_time_and_reason_when_it_left_the_alert_as_it_is() -> None:
    high = alert(severity=HIGH)
    escalated = alert(occurrences=7)
    history = [event(FIRED, high, T0), event(ESCALATED, alert(), T0 + 60, previous=HIGH)]
    (e,) = catch_up_events([escalated], history, set(), NOW)
    assert (e.type, e.time, e.previous_severity, e.reason) == (ESCALATED, T0 + 60, HIGH, "reason 2")
    assert e.alert.occurrences == 7  # the alert as it is now, not as the event saw it
    repeated = [*history, event(REPEATED, alert(), T0 + 600)]
    assert catch_up_events([escalated], repeated, set(), NOW)[0].type == REPEATED
    # The latest event left it HIGH; it is CRITICAL now (the raise was not an event we have).
    (e,) = catch_up_events([escalated], history[:1], set(), NOW)
    assert (e.type, e.time, e.previous_severity) == (FIRED, NOW, 0)


def test_a_told_alert_no_longer_in_the_book_is_resolved_from_its_history() -> None:
    gone = alert("old", state=RESOLVED, resolved_at=T0 + 120)
    history = [event(FIRED, alert("old"), T0), event(RESOLVED_EVENT, gone, T0 + 120)]
    new_episode = alert("new")
    events = catch_up_events([new_episode], history, {"old", "lost"}, NOW)
    assert [(e.type, e.alert.alert_id, e.time) for e in events] == [
        (FIRED, "new", NOW),
        (RESOLVED_EVENT, "old", T0 + 120),
    ]  # and "lost", which nothing remembers, is left out (with a warning)


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
        # Restated: the console was told this severity and state, however long ago; and that is
        # not counted as a duplicate.
        deduplicated = metrics.DEDUPLICATED.labels("console")._value.get()
        assert d.submit(alert_event("a1", "critical"), catch_up=True) == []
        assert metrics.DEDUPLICATED.labels("console")._value.get() == deduplicated
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
    # Restarted with another receiver in place of the console: nothing is left to tell the
    # console, and the new receiver was told nothing.
    receivers = parse_receivers([{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9"}])
    again = Dispatcher(receivers, parse_routes([], ["hook"]), data_dir=tmp_path / "data")
    await again.start()
    try:
        assert again.nflog.told("a2") == ("console",)
        assert again.unresolved() == set()
    finally:
        await again.close()
