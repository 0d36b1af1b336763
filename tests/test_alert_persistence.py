"""Alert state is durable like any other: a restart (kill -9, or a clean stop and its snapshot)
neither forgets an alert, an acknowledgement or a silence, nor emits an alert again; and the log
replayed, or a snapshot restored, gives the state exactly."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc

from pipewarden.server.alerting.manager import AlertManager
from pipewarden.server.alerting.model import Silence
from pipewarden.server.alerting.settings import AlertSettings
from pipewarden.server.core.detect import Anomaly
from pipewarden.server.core.model import FAILED, Execution
from pipewarden.server.core.shards import ShardSet
from pipewarden.server.storage.eventlog import MemoryLog
from pipewarden.storage.v1 import storage_pb2
from pipewarden.v1 import alert_pb2, service_pb2
from tests.support.alerting import FIRED, Stub, Watcher, failures, send
from tests.support.commands import ONLY_STREAKS
from tests.support.helpers import T0
from tests.support.process import ServerProcess


def _start(tmp_path: Path) -> ServerProcess:
    config = tmp_path / "pipewarden.yaml"
    config.write_text(ONLY_STREAKS)
    server = ServerProcess(tmp_path / "data", "--config", str(config))
    server.wait_serving()
    return server


async def _state(
    stub: Stub,
) -> tuple[list[tuple[object, ...]], list[str], list[tuple[object, ...]]]:
    """Alerts (id, pipeline, state, acknowledged by, silenced), silence ids, and history."""
    listed = (await stub.ListAlerts(service_pb2.ListAlertsRequest())).alerts
    silences = (await stub.ListSilences(service_pb2.ListSilencesRequest())).silences
    history = (await stub.ListAlertHistory(service_pb2.ListAlertHistoryRequest())).events
    return (
        sorted((a.alert_id, a.pipeline_id, a.state, a.acknowledged_by, a.silenced) for a in listed),
        [s.silence_id for s in silences],
        [(e.alert.alert_id, e.type, e.time.ToNanoseconds()) for e in history],
    )


async def _after_restart_nothing_fires_again(stub: Stub, known: set[str]) -> None:
    """Runs of the alerting pipelines and a new failing one: only the new one fires."""
    watcher = Watcher(stub)
    await watcher.ready()
    await send(stub, *failures("p2", 1, start=10))
    await send(stub, *failures("fresh", 3))
    await watcher.wait_for(lambda es: any(e.alert.pipeline_id == "fresh" for e in es))
    await asyncio.sleep(0.2)  # let anything else that would come, come
    fired = [e.alert.pipeline_id for e in watcher.events if e.type == FIRED]
    assert fired == ["fresh"], watcher.types()
    listed = (await stub.ListAlerts(service_pb2.ListAlertsRequest())).alerts
    assert {a.alert_id for a in listed} >= known
    await watcher.close()


async def test_alerts_acks_and_silences_survive_kill_9_and_a_clean_stop(tmp_path: Path) -> None:
    server = _start(tmp_path)
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc_stub(channel)
            silence = await stub.CreateSilence(
                service_pb2.CreateSilenceRequest(
                    silence=alert_pb2.Silence(
                        pipeline_id="p3",
                        ends_at=_in_an_hour(),
                        created_by="ana",
                        comment="known issue",
                    )
                )
            )
            watcher = Watcher(stub)
            await watcher.ready()
            await send(stub, *failures("p1", 3), *failures("p2", 3), *failures("p3", 3))
            events = await watcher.wait_count(3)
            await watcher.close()
            ids = {e.alert.pipeline_id: e.alert.alert_id for e in events}
            await stub.AcknowledgeAlert(
                service_pb2.AcknowledgeAlertRequest(alert_id=ids["p1"], by="ana")
            )
            before = await _state(stub)
        assert len(before[0]) == 3 and before[1] == [silence.silence_id]
        assert [a[3] for a in before[0] if a[0] == ids["p1"]] == ["ana"]
        assert [a[4] for a in before[0] if a[0] == ids["p3"]] == [True]
        server.kill()

        server = _start(tmp_path)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc_stub(channel)
            assert await _state(stub) == before
            await _after_restart_nothing_fires_again(stub, set(ids.values()))
            after_runs = await _state(stub)
        assert server.stop(signal.SIGTERM) == 0  # a clean stop writes a snapshot

        server = _start(tmp_path)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc_stub(channel)
            assert await _state(stub) == after_runs
            assert "restored snapshot" in server.log()
            watcher = Watcher(stub)
            await watcher.ready()
            await send(stub, *failures("p1", 1, start=20), *failures("fresh", 1, start=20))
            await asyncio.sleep(0.3)
            assert [e.type for e in watcher.events if e.type == FIRED] == []
            # Changes after the snapshot live in the log after it: one more crash keeps them.
            p2 = next(a for a in before[0] if a[1] == "p2")[0]
            await stub.AcknowledgeAlert(service_pb2.AcknowledgeAlertRequest(alert_id=p2, by="bo"))
            await send(stub, *failures("late", 3))
            await watcher.wait_for(lambda es: any(e.alert.pipeline_id == "late" for e in es))
            await watcher.close()
            after_snapshot = await _state(stub)
        server.kill()

        server = _start(tmp_path)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc_stub(channel)
            assert await _state(stub) == after_snapshot
    finally:
        server.kill()


def service_pb2_grpc_stub(channel: grpc.aio.Channel) -> Stub:
    from pipewarden.v1 import service_pb2_grpc

    return service_pb2_grpc.PipelineMonitorStub(channel)


def _in_an_hour() -> object:
    import time

    from google.protobuf.timestamp_pb2 import Timestamp

    return Timestamp(seconds=int(time.time()) + 3600)


# -- replay and snapshots on the manager itself ----------------------------------------------------


def _drive(manager: AlertManager, shards: ShardSet) -> None:
    """A history with every kind of transition, at times of its own."""
    t = T0
    pipelines = {}
    for pid, up in (("A", ()), ("B", ("A",)), ("C", ())):
        pipelines[pid] = shards.create(pid, "team-" + pid.lower())
        pipelines[pid].upstream = up

    def anomaly(pid: str, severity: int) -> Anomaly:
        return Anomaly(pid, "team-" + pid.lower(), 4, severity, f"{pid} fails", 3, 3, "runs")

    def fail(pid: str) -> None:
        p = pipelines[pid]
        e = Execution(f"{pid}{p.total}", pid, p.team, FAILED, t, t, 1.0, 0, p.upstream, {}, "", t)
        shards.shard_for(pid).apply_terminal(p, e)

    for pid in "ABC":
        fail(pid)
        manager.receive(pipelines[pid], [anomaly(pid, 2)], t)
    manager.flush(t)
    manager.acknowledge(manager.book.alerts(team="team-c")[0].alert_id, "ana")
    manager.create_silence(Silence("", "team-b", "", 0, t, t + 7200, "bob", "noisy"))
    t += 10
    manager.receive(pipelines["A"], [anomaly("A", 3)], t)  # upgraded
    manager.flush(t)
    t += 3600
    manager.tick(t)
    fail("C")
    fail("C")
    manager.receive(pipelines["C"], [], t)  # cleared for two runs: resolved
    manager.flush(t)
    manager.tick(t + 1)  # the lazy changes reach the log


async def test_replaying_the_log_or_restoring_a_snapshot_gives_the_state_exactly() -> None:
    log = MemoryLog()
    clock_time = [T0]
    manager = AlertManager(AlertSettings(), log, clock=lambda: clock_time[0])
    _drive(manager, ShardSet(2, 8))
    state = manager.dump().SerializeToString(deterministic=True)
    kinds = [storage_pb2.LogRecord.FromString(p).WhichOneof("entry") for _, p in log.read(0)]
    assert set(kinds) == {"alerts", "silence"}

    replayed = AlertManager(AlertSettings(), MemoryLog())
    for _, payload in log.read(0):
        replayed.replay(storage_pb2.LogRecord.FromString(payload))
    assert replayed.dump().SerializeToString(deterministic=True) == state

    restored = AlertManager(AlertSettings(), MemoryLog())
    restored.restore(storage_pb2.AlertsSnapshot.FromString(manager.dump().SerializeToString()))
    assert restored.dump().SerializeToString(deterministic=True) == state
    # Nothing was published by replay or restore: their feeds have nothing pending.
    assert not replayed.feed.pending() and not restored.feed.pending()
    states = sorted((a.pipeline_id, a.state, a.severity) for a in restored.book.alerts())
    assert states == [("A", 1, 3), ("B", 1, 2), ("C", 3, 2)]
