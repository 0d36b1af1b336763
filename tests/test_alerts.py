"""The alert lifecycle end to end over gRPC: fire, deduplicate, upgrade, acknowledge, resolve,
escalate and repeat (with a clock the test moves), routing, history and bad input."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import grpc
import pytest

from pipewarden.server.app import App
from pipewarden.v1 import alert_pb2, service_pb2, service_pb2_grpc
from tests.support.alerting import (
    ACKNOWLEDGED,
    CRITICAL,
    ESCALATED,
    FIRED,
    HIGH,
    MEDIUM,
    REPEATED,
    RESOLVED,
    STALE,
    STREAK,
    Clock,
    Watcher,
    alerts,
    config,
    eventually,
    failures,
    send,
    serving,
    successes,
)
from tests.support.helpers import T0, run

NOW = T0 + 100 * 3600  # the server's clock at the start of each test
MINUTE, HOUR = 60.0, 3600.0


async def test_fire_dedup_upgrade_acknowledge_and_resolve(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (_app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        # Three failures in a row: one HIGH alert fires, and receivers are to be told.
        await send(stub, *failures("p1", 3))
        fired = (await watcher.wait_count(1))[0]
        assert fired.type == FIRED and fired.notify
        a = fired.alert
        assert (a.pipeline_id, a.team, a.kind, a.severity) == ("p1", "team-a", STREAK, HIGH)
        assert a.state == alert_pb2.ALERT_STATE_FIRING and a.occurrences == 1
        assert a.fingerprint == "p1/consecutive_failures"
        assert a.alert_id and "3 failures in a row" in a.message
        assert a.first_seen.ToSeconds() == NOW and fired.time.ToSeconds() == NOW

        # A fourth failure: the same alert, seen again, no new event.
        clock.advance(MINUTE)
        await send(stub, *failures("p1", 1, start=3))
        listed = await eventually(lambda: alerts(stub), lambda x: x[0].occurrences == 2)
        assert len(listed) == 1 and listed[0].alert_id == a.alert_id
        assert listed[0].last_seen.ToSeconds() == NOW + MINUTE
        assert listed[0].first_seen.ToSeconds() == NOW
        assert listed[0].observed == 4

        # A fifth: more severe, so the same alert is upgraded and notified anew.
        await send(stub, *failures("p1", 1, start=4))
        upgraded = (await watcher.wait_count(2))[1]
        assert upgraded.type == ESCALATED and upgraded.notify
        assert upgraded.alert.alert_id == a.alert_id
        assert (upgraded.previous_severity, upgraded.alert.severity) == (HIGH, CRITICAL)
        assert upgraded.reason == "the anomaly grew more severe"

        # Acknowledged: who and when are recorded, and the answer says so.
        clock.advance(MINUTE)
        acked = await stub.AcknowledgeAlert(
            service_pb2.AcknowledgeAlertRequest(alert_id=a.alert_id, by="ana")
        )
        assert acked.state == alert_pb2.ALERT_STATE_ACKNOWLEDGED
        assert acked.acknowledged_by == "ana"
        assert acked.acknowledged_at.ToSeconds() == NOW + 2 * MINUTE
        event = (await watcher.wait_count(3))[2]
        assert event.type == ACKNOWLEDGED and event.notify and event.alert.acknowledged_by == "ana"
        # Twice is the same acknowledgement.
        again = await stub.AcknowledgeAlert(
            service_pb2.AcknowledgeAlertRequest(alert_id=a.alert_id, by="bob")
        )
        assert again.acknowledged_by == "ana"

        # The next successful run resolves a failure alert, and whoever was told is told.
        clock.advance(MINUTE)
        await send(stub, *successes("p1", 1, start=5))
        resolved = (await watcher.wait_count(4))[3]
        assert resolved.type == RESOLVED and resolved.notify
        assert resolved.alert.state == alert_pb2.ALERT_STATE_RESOLVED
        assert resolved.alert.resolved_at.ToSeconds() == NOW + 3 * MINUTE
        assert [e.type for e in watcher.events] == [FIRED, ESCALATED, ACKNOWLEDGED, RESOLVED]
        # Resolved alerts are still listed (after the open ones); open-state filters skip them.
        assert (await alerts(stub))[0].state == alert_pb2.ALERT_STATE_RESOLVED
        assert await alerts(stub, state=alert_pb2.ALERT_STATE_FIRING) == []

        # The problem comes back: a new episode, a new alert id, FIRED again.
        await send(stub, *failures("p1", 3, start=6))
        refired = (await watcher.wait_count(5))[4]
        assert refired.type == FIRED and refired.alert.alert_id != a.alert_id
        assert refired.alert.fingerprint == a.fingerprint and refired.alert.occurrences == 1
        assert len(await alerts(stub)) == 1  # one alert per fingerprint
        await watcher.close()


async def _stale_pipeline(stub: object, clock: Clock) -> None:
    """Ten hourly runs of p1 up to NOW, then the clock moves past three cadences: STALE."""
    await send(stub, *successes("p1", 10, start=90))  # type: ignore[arg-type]
    clock.advance(4 * HOUR)


async def test_resolves_after_clear_runs_and_the_hold_time(tmp_path: Path) -> None:
    clock = Clock(NOW)
    cfg = config(tmp_path, "staleness", resolve_after_runs=2, hold_seconds=600)
    async with serving(cfg, clock) as (app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await _stale_pipeline(stub, clock)
        fired = (await watcher.wait_count(1))[0]
        assert (fired.type, fired.alert.kind, fired.alert.severity) == (FIRED, STALE, MEDIUM)
        # One run: the anomaly clears, but one clear run is not enough.
        await send(stub, run("late-1", "p1", start=clock.t - 10))
        await eventually(lambda: alerts(stub), lambda x: "p1" not in _anomalous(app))
        clock.advance(700)
        app.partition.alerts.tick()
        assert (await alerts(stub))[0].state == alert_pb2.ALERT_STATE_FIRING
        # A second clear run; the hold counts from the first clear evaluation, 700 s ago.
        await send(stub, run("late-2", "p1", start=clock.t - 5))
        resolved = (await watcher.wait_count(2))[1]
        assert resolved.type == RESOLVED and resolved.reason == "clear for 2 runs"
        await watcher.close()


async def test_the_hold_time_keeps_a_cleared_alert_open(tmp_path: Path) -> None:
    clock = Clock(NOW)
    cfg = config(tmp_path, "staleness", resolve_after_runs=1, hold_seconds=600)
    async with serving(cfg, clock) as (app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await _stale_pipeline(stub, clock)
        await watcher.wait_count(1)
        await send(stub, run("late-1", "p1", start=clock.t - 10))
        await eventually(lambda: alerts(stub), lambda x: "p1" not in _anomalous(app))
        clock.advance(599)
        app.partition.alerts.tick()
        assert (await alerts(stub))[0].state == alert_pb2.ALERT_STATE_FIRING
        # Cleared alerts neither escalate nor repeat while they wait.
        assert [e.type for e in watcher.events] == [FIRED]
        clock.advance(1)
        app.partition.alerts.tick()
        resolved = (await watcher.wait_count(2))[1]
        assert resolved.type == RESOLVED
        assert resolved.alert.resolved_at.ToSeconds() == clock.t
        await watcher.close()


def _anomalous(app: object) -> set[str]:
    return {c.anomaly.pipeline_id for c in app.partition.anomalies.list()}  # type: ignore[attr-defined]


async def test_unacknowledged_alerts_escalate_on_time_and_repeat(tmp_path: Path) -> None:
    clock = Clock(NOW)
    cfg = config(tmp_path, "staleness", repeat_interval_seconds=2 * HOUR)
    # Staleness would grow HIGH by itself at 6 cadences: keep it MEDIUM, so that only the
    # timers raise it.
    staleness = dataclasses.replace(cfg.detection.staleness, high_factor=99, critical_factor=99)
    cfg = dataclasses.replace(
        cfg, detection=dataclasses.replace(cfg.detection, staleness=staleness)
    )
    async with serving(cfg, clock) as (app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await _stale_pipeline(stub, clock)
        fired = (await watcher.wait_count(1))[0]
        assert fired.alert.severity == MEDIUM
        start = clock.t
        # The defaults: MEDIUM becomes HIGH after 4 h unacknowledged, HIGH becomes CRITICAL
        # after 1 h more.
        clock.t = start + 2 * HOUR - 1
        app.partition.alerts.tick()
        assert [e.type for e in watcher.events] == [FIRED]
        clock.t = start + 2 * HOUR
        app.partition.alerts.tick()
        repeated = (await watcher.wait_count(2))[1]
        assert repeated.type == REPEATED and repeated.notify
        assert repeated.reason == "still firing after 2h"
        clock.t = start + 4 * HOUR - 1
        app.partition.alerts.tick()
        assert len(watcher.events) == 2
        clock.t = start + 4 * HOUR
        app.partition.alerts.tick()
        escalated = (await watcher.wait_count(3))[2]
        assert escalated.type == ESCALATED and escalated.notify
        assert (escalated.previous_severity, escalated.alert.severity) == (MEDIUM, HIGH)
        assert escalated.reason == "unacknowledged for 4h"
        clock.t = start + 5 * HOUR - 1
        app.partition.alerts.tick()
        assert len(watcher.events) == 3
        clock.t = start + 5 * HOUR
        app.partition.alerts.tick()
        critical = (await watcher.wait_count(4))[3]
        assert (critical.type, critical.alert.severity) == (ESCALATED, CRITICAL)
        assert critical.reason == "unacknowledged for 1h"
        # CRITICAL is the top: it only repeats, counted from the last notification.
        clock.t = start + 7 * HOUR
        app.partition.alerts.tick()
        assert [e.type for e in await watcher.wait_count(5)][4] == REPEATED
        await watcher.close()


async def test_an_alert_unacknowledged_past_several_steps_escalates_to_the_last(
    tmp_path: Path,
) -> None:
    """Escalation crosses thresholds, as streaks do: an alert the timer first sees after both
    delays have passed (the server was stopped, or its timer held up) is raised straight to
    CRITICAL, in one event, not to HIGH with CRITICAL an hour later."""
    clock = Clock(NOW)
    cfg = config(tmp_path, "staleness", repeat_interval_seconds=0)
    staleness = dataclasses.replace(cfg.detection.staleness, high_factor=99, critical_factor=99)
    cfg = dataclasses.replace(
        cfg, detection=dataclasses.replace(cfg.detection, staleness=staleness)
    )
    async with serving(cfg, clock) as (app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await _stale_pipeline(stub, clock)
        fired = (await watcher.wait_count(1))[0]
        assert fired.alert.severity == MEDIUM
        clock.t += 6 * HOUR  # past 4 h (to HIGH) and 4 h + 1 h (to CRITICAL)
        app.partition.alerts.tick()
        escalated = (await watcher.wait_count(2))[1]
        assert escalated.type == ESCALATED and escalated.notify
        assert (escalated.previous_severity, escalated.alert.severity) == (MEDIUM, CRITICAL)
        assert escalated.reason == "unacknowledged for 5h"
        clock.t += HOUR
        app.partition.alerts.tick()
        await asyncio.sleep(0.1)
        assert len(watcher.events) == 2
        await watcher.close()


async def test_acknowledged_alerts_neither_escalate_nor_repeat(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await send(stub, *failures("p1", 3), *failures("p2", 3))
        fired = await watcher.wait_count(2)
        by_pipeline = {e.alert.pipeline_id: e.alert for e in fired}
        await stub.AcknowledgeAlert(
            service_pb2.AcknowledgeAlertRequest(alert_id=by_pipeline["p1"].alert_id, by="ana")
        )
        await watcher.wait_count(3)
        clock.advance(HOUR)
        app.partition.alerts.tick()
        events = await watcher.wait_count(4)
        assert [(e.alert.pipeline_id, e.type) for e in events[3:]] == [("p2", ESCALATED)]
        clock.advance(4 * HOUR)
        app.partition.alerts.tick()
        events = await watcher.wait_count(5)
        assert [(e.alert.pipeline_id, e.type) for e in events[4:]] == [("p2", REPEATED)]
        listed = {a.pipeline_id: a for a in await alerts(stub)}
        assert listed["p1"].severity == HIGH and listed["p2"].severity == CRITICAL
        await watcher.close()


async def test_watch_filters_by_team_and_severity(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (_app, stub):
        everything = Watcher(stub)
        team_b = Watcher(stub, team="team-b")
        critical = Watcher(stub, min_severity=CRITICAL)
        for w in (everything, team_b, critical):
            await w.ready()
        await send(
            stub,
            *failures("a1", 3),
            *failures("b1", 3, team="team-b"),
            *failures("b2", 5, team="team-b"),
        )
        await everything.wait_count(3)
        await team_b.wait_count(2)
        await critical.wait_count(1)
        assert sorted(p for p, _ in everything.types()) == ["a1", "b1", "b2"]
        assert sorted(p for p, _ in team_b.types()) == ["b1", "b2"]
        assert critical.types() == [("b2", FIRED)]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.WatchAlerts(service_pb2.WatchAlertsRequest(min_severity=7)):  # type: ignore[arg-type]
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for w in (everything, team_b, critical):
            await w.close()


async def test_a_watcher_that_falls_behind_is_ended_and_slows_nobody(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path, watch_queue_size=3), clock) as (app, stub):
        slow = Watcher(stub)
        await slow.ready()
        # An in-process subscriber, unbounded.
        steady = app.partition.alerts.feed.subscribe(maxsize=0)
        # Ten alerts in one detection pass: ten events at once, more than the queue holds.
        response = await stub.Ingest(
            service_pb2.IngestRequest(
                executions=[e for i in range(10) for e in failures(f"p{i}", 3)]
            )
        )
        assert response.accepted == 30  # ingestion was not held back
        async with asyncio.timeout(5):
            got = [await steady.get() for _ in range(10)]
        assert sorted(e.alert.pipeline_id for e in got) == sorted(f"p{i}" for i in range(10))
        await eventually(lambda: _noop(), lambda _: slow.error is not None)
        assert slow.error is not None
        assert slow.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "reconnect" in (slow.error.details() or "")
        assert len(slow.events) <= 3
        # Reconnecting works, and the other subscriber goes on.
        again = Watcher(stub)
        await again.ready()
        await send(stub, *failures("late", 3))
        assert (await again.wait_count(1))[0].alert.pipeline_id == "late"
        assert (await steady.get()).alert.pipeline_id == "late"
        steady.close()
        await again.close()
        await slow.close()


async def _noop() -> None:
    return None


async def test_routed_alerts_group_by_team_then_severity(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (_app, stub):
        await send(
            stub,
            *failures("a-crit", 5),
            *failures("a-high", 3),
            *failures("a-high2", 4),
            *failures("b-high", 3, team="team-b"),
            *failures("c-fixed", 3, team="team-c"),
        )
        await eventually(lambda: alerts(stub), lambda x: len(x) == 5)
        fixed = next(a for a in await alerts(stub) if a.pipeline_id == "c-fixed")
        await send(stub, *successes("c-fixed", 1, start=3, team="team-c"))
        await eventually(
            lambda: alerts(stub, team="team-c"),
            lambda x: x[0].state == alert_pb2.ALERT_STATE_RESOLVED,
        )
        routed = await stub.GetRoutedAlerts(service_pb2.GetRoutedAlertsRequest())
        assert sorted(routed.teams) == ["team-a", "team-b"]  # resolved alerts are not routed
        a = routed.teams["team-a"]
        assert [x.pipeline_id for x in a.critical] == ["a-crit"]
        assert sorted(x.pipeline_id for x in a.high) == ["a-high", "a-high2"]
        assert list(a.medium) == []
        assert [x.pipeline_id for x in routed.teams["team-b"].high] == ["b-high"]
        one = await stub.GetRoutedAlerts(service_pb2.GetRoutedAlertsRequest(team="team-b"))
        assert list(one.teams) == ["team-b"]
        # ListAlerts: open before resolved, most severe first; filters.
        listed = await alerts(stub)
        assert listed[0].pipeline_id == "a-crit" and listed[-1].alert_id == fixed.alert_id
        assert {x.pipeline_id for x in await alerts(stub, min_severity=CRITICAL)} == {"a-crit"}
        assert [x.pipeline_id for x in await alerts(stub, team="team-b")] == ["b-high"]
        resolved = await alerts(stub, state=alert_pb2.ALERT_STATE_RESOLVED)
        assert [x.pipeline_id for x in resolved] == ["c-fixed"]


async def test_history_is_kept_per_team_and_bounded(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path, history_size=3), clock) as (_app, stub):
        # Each step waits for its event: detection judges the state it finds, so a success
        # and three failures in one pass would be no recovery at all.
        watcher = Watcher(stub)
        await watcher.ready()
        await send(stub, *failures("a1", 3), *failures("b1", 3, team="team-b"))
        await watcher.wait_count(2)
        clock.advance(MINUTE)
        await send(stub, *failures("a1", 2, start=3))  # CRITICAL: escalated
        await watcher.wait_count(3)
        clock.advance(MINUTE)
        await send(stub, *successes("a1", 1, start=5))  # resolved
        await watcher.wait_count(4)
        clock.advance(MINUTE)
        await send(stub, *failures("a1", 3, start=6))  # fires again
        await watcher.wait_count(5)
        await watcher.close()

        def history(team: str = "", limit: int = 0) -> object:
            return stub.ListAlertHistory(
                service_pb2.ListAlertHistoryRequest(team=team, limit=limit)
            )

        got = await eventually(lambda: history("team-a"), lambda h: h.events[0].type == FIRED)
        # Four events happened to team-a's alerts; three are kept, newest first.
        assert [e.type for e in got.events] == [FIRED, RESOLVED, ESCALATED]
        assert got.events[0].time.ToSeconds() == NOW + 3 * MINUTE
        assert [e.alert.pipeline_id for e in (await history("team-b")).events] == ["b1"]
        assert len((await history()).events) == 4
        assert len((await history(limit=2)).events) == 2
        assert (await history("nobody")).events == []


async def test_bad_requests_are_refused_with_a_reason(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (_app, stub):
        await send(stub, *failures("p1", 3), *failures("p2", 3))
        listed = await eventually(lambda: alerts(stub), lambda x: len(x) == 2)

        async def ack_error(alert_id: str, by: str) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.AcknowledgeAlert(
                    service_pb2.AcknowledgeAlertRequest(alert_id=alert_id, by=by)
                )
            return info.value

        missing = await ack_error("a-nonexistent", "ana")
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        assert "a-nonexistent" in (missing.details() or "")
        empty_by = await ack_error(listed[0].alert_id, "")
        assert empty_by.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "by is required" in (empty_by.details() or "")
        assert (await ack_error("", "ana")).code() == grpc.StatusCode.INVALID_ARGUMENT
        # Nothing changed.
        assert all(a.state == alert_pb2.ALERT_STATE_FIRING for a in await alerts(stub))
        await send(stub, *successes("p1", 1, start=3))
        done = await eventually(
            lambda: alerts(stub, state=alert_pb2.ALERT_STATE_RESOLVED), lambda x: len(x) == 1
        )
        late = await ack_error(done[0].alert_id, "ana")
        assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
        for bad in (
            service_pb2.ListAlertsRequest(min_severity=9),  # type: ignore[arg-type]
            service_pb2.ListAlertsRequest(state=9),  # type: ignore[arg-type]
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListAlerts(bad)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListAlertHistory(service_pb2.ListAlertHistoryRequest(limit=-1))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_every_rpc_of_the_service_is_implemented(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (app, _stub):
        service = service_pb2.DESCRIPTOR.services_by_name["PipelineMonitor"]
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            if method.client_streaming:
                call = channel.stream_stream(path)(iter([b""]))
            elif method.server_streaming:
                call = channel.unary_stream(path)(b"", timeout=0.5)
            else:
                call = channel.unary_unary(path)(b"", timeout=2)
            try:
                if method.server_streaming:
                    async for _ in call:
                        pass
                else:
                    await call
            except grpc.aio.AioRpcError as e:
                assert e.code() != grpc.StatusCode.UNIMPLEMENTED, method.name
        await channel.close()


async def test_a_stop_ends_the_watch_streams_at_once(tmp_path: Path) -> None:
    clock = Clock(NOW)
    app = App(config(tmp_path), clock=clock)
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        watcher = Watcher(service_pb2_grpc.PipelineMonitorStub(channel))
        await watcher.ready()
        began = time.perf_counter()
        await app.close()
        # Well within the grace period (1 s here) that open ingest streams get.
        assert time.perf_counter() - began < 0.9
        await watcher.ended()
        assert watcher.error is None  # the stream ended normally
