"""Silences end to end: matchers, muted alerts that still exist, resolve-after-silence, ending
a silence, and bad silences."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from pipewarden.v1 import alert_pb2, service_pb2
from tests.support.alerting import (
    FIRED,
    RESOLVED,
    STALE,
    STREAK,
    Clock,
    Stub,
    Watcher,
    alerts,
    config,
    failures,
    send,
    serving,
    successes,
)
from tests.support.helpers import T0

NOW = T0 + 100 * 3600
HOUR = 3600.0


def ts(t: float) -> Timestamp:
    return Timestamp(seconds=int(t))


async def create(stub: Stub, **fields: object) -> alert_pb2.Silence:
    fields.setdefault("created_by", "ana")
    fields.setdefault("ends_at", ts(NOW + HOUR))
    return await stub.CreateSilence(
        service_pb2.CreateSilenceRequest(silence=alert_pb2.Silence(**fields))  # type: ignore[arg-type]
    )


async def test_a_silenced_alert_exists_but_is_not_notified(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (_app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        silence = await create(stub, team="team-a", pipeline_id="p1", comment="maintenance")
        assert silence.silence_id.startswith("s-")
        assert silence.starts_at.ToSeconds() == NOW  # absent start: now
        assert (silence.created_by, silence.comment) == ("ana", "maintenance")
        # p1 matches the silence; p2 (same team, another pipeline) does not.
        await send(stub, *failures("p1", 3), *failures("p2", 3))
        events = await watcher.wait_count(2)
        by_pipeline = {e.alert.pipeline_id: e for e in events}
        muted, loud = by_pipeline["p1"], by_pipeline["p2"]
        assert muted.type == FIRED and not muted.notify and muted.alert.silenced
        assert muted.reason == "silenced"
        assert loud.notify and not loud.alert.silenced
        listed = {a.pipeline_id: a for a in await alerts(stub)}
        assert listed["p1"].silenced and listed["p1"].state == alert_pb2.ALERT_STATE_FIRING
        # Nobody was told p1 fired, so nobody is told it resolved.
        await send(stub, *successes("p1", 1, start=3))
        resolved = (await watcher.wait_count(3))[2]
        assert resolved.type == RESOLVED and not resolved.notify
        await watcher.close()


async def test_receivers_told_of_an_alert_are_told_it_resolved_though_silenced(
    tmp_path: Path,
) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (_app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await send(stub, *failures("p1", 3))
        fired = (await watcher.wait_count(1))[0]
        assert fired.notify
        await create(stub, kind=STREAK)
        assert (await alerts(stub))[0].silenced
        await send(stub, *successes("p1", 1, start=3))
        resolved = (await watcher.wait_count(2))[1]
        assert resolved.type == RESOLVED and resolved.notify
        assert resolved.alert.silenced
        await watcher.close()


async def test_matchers_on_kind_and_team(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (_app, stub):
        await create(stub, kind=STALE)  # another kind: mutes nothing here
        await create(stub, team="team-b")
        watcher = Watcher(stub)
        await watcher.ready()
        await send(stub, *failures("a1", 3), *failures("b1", 3, team="team-b"))
        events = await watcher.wait_count(2)
        assert {e.alert.pipeline_id: e.notify for e in events} == {"a1": True, "b1": False}
        await watcher.close()


async def test_ending_a_silence_unmutes_and_fires_what_nobody_heard_of(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (app, stub):
        silence = await create(stub, team="team-a")
        watcher = Watcher(stub)
        await watcher.ready()
        await send(stub, *failures("p1", 3))
        assert not (await watcher.wait_count(1))[0].notify
        listed = await stub.ListSilences(service_pb2.ListSilencesRequest())
        assert [s.silence_id for s in listed.silences] == [silence.silence_id]
        only_b = await stub.ListSilences(service_pb2.ListSilencesRequest(team="team-b"))
        assert list(only_b.silences) == []
        clock.advance(60)
        ended = await stub.DeleteSilence(
            service_pb2.DeleteSilenceRequest(silence_id=silence.silence_id, by="bob")
        )
        assert ended.ends_at.ToSeconds() == NOW + 60
        again = (await watcher.wait_count(2))[1]
        assert again.type == FIRED and again.notify and not again.alert.silenced
        assert again.reason == "no longer silenced"
        assert list((await stub.ListSilences(service_pb2.ListSilencesRequest())).silences) == []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.DeleteSilence(
                service_pb2.DeleteSilenceRequest(silence_id=silence.silence_id, by="bob")
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # A silence that runs out by itself does the same, at the next timer tick.
        timed = await create(stub, pipeline_id="p2", ends_at=ts(clock.t + 600))
        await send(stub, *failures("p2", 3))
        assert not (await watcher.wait_count(3))[2].notify
        clock.advance(600)
        app.partition.alerts.tick()
        last = (await watcher.wait_count(4))[3]
        assert (last.alert.pipeline_id, last.type, last.notify) == ("p2", FIRED, True)
        assert timed.silence_id not in {
            s.silence_id
            for s in (await stub.ListSilences(service_pb2.ListSilencesRequest())).silences
        }
        await watcher.close()


async def test_a_silence_that_starts_later_mutes_from_then(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (app, stub):
        await create(stub, starts_at=ts(NOW + HOUR), ends_at=ts(NOW + 2 * HOUR))
        watcher = Watcher(stub)
        await watcher.ready()
        await send(stub, *failures("p1", 3))
        fired = (await watcher.wait_count(1))[0]
        assert fired.notify and not fired.alert.silenced
        clock.advance(HOUR)
        app.partition.alerts.tick()
        assert (await alerts(stub))[0].silenced
        # Muted, it does not escalate though an hour passed unacknowledged.
        assert [e.type for e in watcher.events] == [FIRED]
        await watcher.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ends_at": ts(NOW - 10), "starts_at": ts(NOW)}, "ends before it starts"),
        ({"starts_at": ts(NOW + 100), "ends_at": ts(NOW + 50)}, "ends before it starts"),
        ({"ends_at": None}, "ends_at is required"),
        ({"ends_at": ts(NOW - 1), "starts_at": ts(NOW - 100)}, "in the past"),
        ({"kind": 42}, "kind 42 is not a known AnomalyKind"),
        ({"created_by": ""}, "created_by is required"),
        ({"silence_id": "mine"}, "assigned by the server"),
        ({"comment": "x" * 5000}, "comment is longer"),
    ],
)
async def test_bad_silences_are_refused(
    tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (_app, stub):
        if fields.get("ends_at", "") is None:
            silence = alert_pb2.Silence(created_by="ana")
            call = stub.CreateSilence(service_pb2.CreateSilenceRequest(silence=silence))
        else:
            call = create(stub, **fields)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (info.value.details() or "")
        assert list((await stub.ListSilences(service_pb2.ListSilencesRequest())).silences) == []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateSilence(service_pb2.CreateSilenceRequest())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for request in (
            service_pb2.DeleteSilenceRequest(silence_id="s-none", by="ana"),
            service_pb2.DeleteSilenceRequest(silence_id="", by="ana"),
            service_pb2.DeleteSilenceRequest(silence_id="s-none", by=""),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.DeleteSilence(request)
            expected = grpc.StatusCode.NOT_FOUND if request.by and request.silence_id else None
            assert info.value.code() == (expected or grpc.StatusCode.INVALID_ARGUMENT)
