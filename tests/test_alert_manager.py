"""The alert manager and the feed as plain objects: resolution rules, severity that does not
fall, event order, and subscriptions (filters, overflow, closing)."""

from __future__ import annotations

import asyncio

import pytest

from pipewarden.server.alerting.feed import AlertFeed, FeedOverflow
from pipewarden.server.alerting.manager import AlertManager, should_notify
from pipewarden.server.alerting.model import (
    ACKNOWLEDGED_EVENT,
    CONSECUTIVE_FAILURES,
    FIRED,
    RESOLVED,
    RESOLVED_EVENT,
    AlertEvent,
)
from pipewarden.server.alerting.settings import AlertSettings
from pipewarden.server.core.detect import Anomaly
from pipewarden.server.core.model import SUCCEEDED, Execution
from pipewarden.server.core.shards import PipelineState, ShardSet
from pipewarden.server.storage.eventlog import MemoryLog
from tests.support.helpers import T0

REGRESSION = 5


class Fixture:
    """A manager on a memory log, one pipeline, and a way to add runs to it."""

    def __init__(self, **settings: object) -> None:
        self.log = MemoryLog()
        self.manager = AlertManager(AlertSettings(**settings), self.log)  # type: ignore[arg-type]
        self.shards = ShardSet(1, 8)
        self.p: PipelineState = self.shards.create("p", "team")

    def runs(self, n: int, t: float) -> None:
        for i in range(n):
            e = Execution(f"r{self.p.total}", "p", "team", SUCCEEDED, t, t, 1.0, 1, (), {}, "", t)
            self.shards.shard_for("p").apply_terminal(self.p, e)
            del i

    def evaluate(self, kinds: dict[int, int], t: float) -> None:
        anomalies = [Anomaly("p", "team", k, s, "m", 1, 1, "runs") for k, s in kinds.items()]
        self.manager.receive(self.p, anomalies, t)
        self.manager.flush(t)

    @property
    def events(self) -> list[AlertEvent]:
        """Every event published so far (the feed is never started: they all wait in it)."""
        return self.manager.feed.pending()


@pytest.mark.parametrize(
    ("kind", "after_runs", "hold", "clear_runs", "waited", "resolved"),
    [
        (REGRESSION, 2, 0, 1, 0, False),  # one clear run is not enough...
        (REGRESSION, 2, 0, 2, 0, True),  # ...two are
        (REGRESSION, 3, 0, 2, 0, False),
        (REGRESSION, 2, 600, 2, 599, False),  # clear for long enough runs, not long enough time
        (REGRESSION, 2, 600, 2, 600, True),
        (CONSECUTIVE_FAILURES, 2, 0, 1, 0, True),  # the next successful run ends a streak
        (CONSECUTIVE_FAILURES, 2, 600, 1, 10, False),  # but the hold still applies
    ],
)
def test_resolution(
    kind: int, after_runs: int, hold: float, clear_runs: int, waited: float, resolved: bool
) -> None:
    f = Fixture(resolve_after_runs=after_runs, hold_seconds=hold)
    f.evaluate({kind: 2}, T0)
    f.evaluate({}, T0 + 1)  # the anomaly clears: the hold counts from here
    f.runs(clear_runs, T0 + 2)
    f.evaluate({}, T0 + 2)
    f.manager.tick(T0 + 1 + waited)
    state = f.manager.book.alerts()[0].state
    assert (state == RESOLVED) is resolved


def test_severity_never_falls_while_open_and_the_anomaly_returning_keeps_the_alert() -> None:
    f = Fixture()
    f.evaluate({REGRESSION: 3}, T0)
    f.evaluate({REGRESSION: 1}, T0 + 1)
    alert = f.manager.book.alerts()[0]
    assert (alert.severity, alert.detected_severity, alert.occurrences) == (3, 1, 2)
    f.evaluate({}, T0 + 2)
    f.runs(1, T0 + 3)
    f.evaluate({}, T0 + 3)
    f.evaluate({REGRESSION: 1}, T0 + 4)  # back before it resolved: the same alert, seen again
    again = f.manager.book.alerts()[0]
    assert again.alert_id == alert.alert_id and again.anomaly_present and again.clear_runs == 0
    assert [e.type for e in f.events] == [FIRED]


def test_an_alert_acknowledged_before_its_pass_ends_is_announced_first() -> None:
    f = Fixture()
    f.manager.receive(f.p, [Anomaly("p", "team", REGRESSION, 2, "m", 1, 1, "x")], T0)
    alert = f.manager.book.alerts()[0]
    f.manager.acknowledge(alert.alert_id, "ana")
    f.manager.flush(T0)
    events = f.manager.feed.pending()
    assert [e.type for e in events] == [FIRED, ACKNOWLEDGED_EVENT]
    assert should_notify(f.manager.book.alerts()[0])  # acknowledged, but neither muted nor closed


def test_resolved_alerts_are_forgotten_after_their_retention() -> None:
    f = Fixture(resolved_retention_seconds=100)
    f.evaluate({CONSECUTIVE_FAILURES: 2}, T0)
    f.runs(1, T0 + 1)
    f.evaluate({}, T0 + 1)
    assert [e.type for e in f.events] == [FIRED, RESOLVED_EVENT]
    f.manager.tick(T0 + 100)
    assert len(f.manager.book.alerts()) == 1
    f.manager.tick(T0 + 101)
    assert f.manager.book.alerts() == []
    assert len(f.manager.book.history("team")) == 2  # the history keeps what happened


async def test_subscriptions_filter_overflow_and_close() -> None:
    feed = AlertFeed(MemoryLog())
    feed.start()
    f = Fixture()
    f.evaluate({REGRESSION: 1}, T0)
    f.evaluate({REGRESSION: 3}, T0 + 1)
    medium, critical = f.events[0], AlertEvent(2, f.manager.book.alerts()[0].copy(), T0 + 1, True)
    everything = feed.subscribe(maxsize=0)
    other_team = feed.subscribe(team="other")
    only_critical = feed.subscribe(min_severity=3)
    tiny = feed.subscribe(maxsize=1)
    feed.publish(1, [medium, critical])
    async with asyncio.timeout(2):
        assert [await everything.get(), await everything.get()] == [medium, critical]
        assert await only_critical.get() == critical
        with pytest.raises(FeedOverflow):
            await tiny.get()
    assert tiny.closed and tiny.overflowed and other_team.pending() == 0
    assert feed.subscribers == 3
    await feed.close()
    with pytest.raises(StopAsyncIteration):
        await everything.get()
    late = feed.subscribe()
    assert late.closed
