"""The authorization matrix: every RPC and HTTP endpoint × every caller (no token, an unknown
token, a reader, a writer and an admin) × its own team, another team, and no team filter,
against a real server over a real channel. Each cell's expected outcome is in one table."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from pipewarden.server.api.auth import AuthToken, digest
from pipewarden.server.app import App
from pipewarden.v1 import alert_pb2, service_pb2
from tests.support.alerting import Clock, Stub, Watcher, config, eventually, failures, serving
from tests.support.helpers import T0, request, run

OWN, OTHER = "team-a", "team-b"
NOW = T0 + 100 * 3600
TOKENS = {
    "reader": "reader-secret-a",
    "writer": "writer-secret-a",
    "admin": "admin-secret",
}
CONFIGURED = (
    AuthToken(token=TOKENS["reader"], team=OWN, role="reader"),
    # The writer's token is configured by its digest only.
    AuthToken(token="", team=OWN, role="writer", sha256=digest(TOKENS["writer"]).hex()),
    AuthToken(token=TOKENS["admin"], team=None, role="admin"),
)
CALLERS = ("none", "unknown", "reader", "writer", "admin")
WRITES = {"Ingest", "StreamIngest", "AcknowledgeAlert", "CreateSilence", "DeleteSilence"}
# RPCs with a team filter that may be left empty: the rows then shown are checked.
LISTS = {
    "ListPipelineHealth",
    "ListTeamMetrics",
    "ListAnomalies",
    "ListAlerts",
    "GetRoutedAlerts",
    "ListSilences",
    "ListAlertHistory",
}
HTTP = {"/metrics", "/healthz", "/readyz"}


def metadata(caller: str) -> tuple[tuple[str, str], ...]:
    if caller == "none":
        return ()
    token = TOKENS.get(caller, "not-a-configured-token")
    return (("authorization", f"Bearer {token}"),)


def expected(caller: str, rpc: str, target: str) -> str:
    """The outcome of one cell: OK, a status code's name, REJECTED (an ingest whose rows were
    all refused), or for HTTP a status number."""
    if rpc in ("/healthz", "/readyz"):
        return "200"
    if caller in ("none", "unknown"):
        return "401" if rpc in HTTP else "UNAUTHENTICATED"
    if rpc == "/metrics":
        return "200" if caller == "admin" else "403"
    if caller == "admin" or target == "all":
        return "OK"  # for "all", the rows shown are checked by the call itself
    if caller == "reader" and rpc in WRITES:
        return "PERMISSION_DENIED"
    if target == OWN:
        return "OK"
    if caller == "writer" and rpc in ("Ingest", "StreamIngest"):
        return "REJECTED"
    return "PERMISSION_DENIED"


@dataclasses.dataclass
class World:
    """What the cells act on."""

    app: App
    stub: Stub
    admin: tuple[tuple[str, str], ...]
    alert_ids: dict[str, str]
    ids: itertools.count[int] = dataclasses.field(default_factory=itertools.count)


def _teams_ok(caller: str, teams: set[str]) -> str:
    """For a list without a team filter: a team token must see only its own team's rows, an
    admin both teams'."""
    if caller == "admin":
        return "OK" if {OWN, OTHER} <= teams else f"MISSING {sorted(teams)}"
    return "OK" if teams <= {OWN} else f"LEAK {sorted(teams)}"


Call = Callable[[World, tuple[tuple[str, str], ...], str, str], Awaitable[str]]


async def _ingest(w: World, md: Any, team: str, caller: str) -> str:
    eid = f"x{next(w.ids)}"
    r = await w.stub.Ingest(request(run(eid, f"new-{team}", team)), metadata=md)
    return "REJECTED" if r.rejected and not r.accepted else "OK"


async def _stream_ingest(w: World, md: Any, team: str, caller: str) -> str:
    eid = f"x{next(w.ids)}"
    call = w.stub.StreamIngest(iter([request(run(eid, f"new-{team}", team))]), metadata=md)
    answers = [r async for r in call]
    return "REJECTED" if answers[0].rejected and not answers[0].accepted else "OK"


async def _pipelines(w: World, md: Any, team: str, caller: str) -> str:
    r = await w.stub.ListPipelineHealth(
        service_pb2.ListPipelineHealthRequest(team="" if team == "all" else team), metadata=md
    )
    return _teams_ok(caller, {p.team for p in r.pipelines}) if team == "all" else "OK"


async def _team_metrics(w: World, md: Any, team: str, caller: str) -> str:
    r = await w.stub.ListTeamMetrics(service_pb2.ListTeamMetricsRequest(), metadata=md)
    return _teams_ok(caller, {t.team for t in r.teams})


async def _anomalies(w: World, md: Any, team: str, caller: str) -> str:
    r = await w.stub.ListAnomalies(
        service_pb2.ListAnomaliesRequest(team="" if team == "all" else team), metadata=md
    )
    return _teams_ok(caller, {a.team for a in r.anomalies}) if team == "all" else "OK"


async def _alerts(w: World, md: Any, team: str, caller: str) -> str:
    r = await w.stub.ListAlerts(
        service_pb2.ListAlertsRequest(team="" if team == "all" else team), metadata=md
    )
    return _teams_ok(caller, {a.team for a in r.alerts}) if team == "all" else "OK"


async def _routed(w: World, md: Any, team: str, caller: str) -> str:
    r = await w.stub.GetRoutedAlerts(
        service_pb2.GetRoutedAlertsRequest(team="" if team == "all" else team), metadata=md
    )
    return _teams_ok(caller, set(r.teams)) if team == "all" else "OK"


async def _silences(w: World, md: Any, team: str, caller: str) -> str:
    r = await w.stub.ListSilences(
        service_pb2.ListSilencesRequest(team="" if team == "all" else team), metadata=md
    )
    return _teams_ok(caller, {s.team for s in r.silences}) if team == "all" else "OK"


async def _history(w: World, md: Any, team: str, caller: str) -> str:
    r = await w.stub.ListAlertHistory(
        service_pb2.ListAlertHistoryRequest(team="" if team == "all" else team), metadata=md
    )
    return _teams_ok(caller, {e.alert.team for e in r.events}) if team == "all" else "OK"


async def _get_pipeline(w: World, md: Any, team: str, caller: str) -> str:
    await w.stub.GetPipelineHealth(
        service_pb2.GetPipelineHealthRequest(pipeline_id=f"p-{team}"), metadata=md
    )
    return "OK"


async def _get_team(w: World, md: Any, team: str, caller: str) -> str:
    await w.stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team=team), metadata=md)
    return "OK"


async def _watch(w: World, md: Any, team: str, caller: str) -> str:
    call = w.stub.WatchAlerts(service_pb2.WatchAlertsRequest(team=team), metadata=md)
    try:
        await call.initial_metadata()
        code = await call.code() if call.done() else grpc.StatusCode.OK
    finally:
        call.cancel()
    if code != grpc.StatusCode.OK:
        raise _Status(code)
    return "OK"


async def _acknowledge(w: World, md: Any, team: str, caller: str) -> str:
    await w.stub.AcknowledgeAlert(
        service_pb2.AcknowledgeAlertRequest(alert_id=w.alert_ids[team], by="someone"),
        metadata=md,
    )
    return "OK"


def _silence(team: str) -> service_pb2.CreateSilenceRequest:
    return service_pb2.CreateSilenceRequest(
        silence=alert_pb2.Silence(
            team=team, created_by="someone", ends_at=Timestamp(seconds=int(NOW + 3600))
        )
    )


async def _create_silence(w: World, md: Any, team: str, caller: str) -> str:
    await w.stub.CreateSilence(_silence(team), metadata=md)
    return "OK"


async def _delete_silence(w: World, md: Any, team: str, caller: str) -> str:
    made = await w.stub.CreateSilence(_silence(team), metadata=w.admin)
    await w.stub.DeleteSilence(
        service_pb2.DeleteSilenceRequest(silence_id=made.silence_id, by="someone"), metadata=md
    )
    return "OK"


class _Status(Exception):
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code


GRPC: dict[str, tuple[Call, tuple[str, ...]]] = {
    "Ingest": (_ingest, (OWN, OTHER)),
    "StreamIngest": (_stream_ingest, (OWN, OTHER)),
    "GetPipelineHealth": (_get_pipeline, (OWN, OTHER)),
    "ListPipelineHealth": (_pipelines, (OWN, OTHER, "all")),
    "GetTeamMetrics": (_get_team, (OWN, OTHER)),
    "ListTeamMetrics": (_team_metrics, ("all",)),
    "ListAnomalies": (_anomalies, (OWN, OTHER, "all")),
    "ListAlerts": (_alerts, (OWN, OTHER, "all")),
    "GetRoutedAlerts": (_routed, (OWN, OTHER, "all")),
    "WatchAlerts": (_watch, (OWN, OTHER)),
    "AcknowledgeAlert": (_acknowledge, (OWN, OTHER)),
    "CreateSilence": (_create_silence, (OWN, OTHER)),
    "ListSilences": (_silences, (OWN, OTHER, "all")),
    "DeleteSilence": (_delete_silence, (OWN, OTHER)),
    "ListAlertHistory": (_history, (OWN, OTHER, "all")),
}


def test_the_matrix_names_every_rpc() -> None:
    from pipewarden.v1 import service_pb2 as pb

    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["PipelineMonitor"].methods}
    assert methods == set(GRPC)


async def _world(app: App, stub: Stub) -> World:
    admin = metadata("admin")
    for team in (OWN, OTHER):
        r = await stub.Ingest(request(*failures(f"p-{team}", 3, team=team)), metadata=admin)
        assert r.accepted == 3
    found = await eventually(
        lambda: stub.ListAlerts(service_pb2.ListAlertsRequest(), metadata=admin),
        lambda r: {a.team for a in r.alerts} == {OWN, OTHER},
    )
    ids = {a.team: a.alert_id for a in found.alerts}
    await stub.CreateSilence(_silence(OWN), metadata=admin)
    await stub.CreateSilence(_silence(OTHER), metadata=admin)
    return World(app, stub, admin, ids)


@pytest.mark.parametrize("caller", CALLERS)
async def test_authorization_matrix(
    tmp_path: Path, caller: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = dataclasses.replace(config(tmp_path), tokens=CONFIGURED)
    md = metadata(caller)
    wrong: list[str] = []
    cells = 0
    caplog.set_level(logging.INFO, logger="pipewarden.audit")
    async with serving(cfg, Clock(NOW)) as (app, stub):
        world = await _world(app, stub)
        for rpc, (call, targets) in GRPC.items():
            for target in targets:
                want = expected(caller, rpc, target)
                try:
                    got = await call(world, md, target, caller)
                except grpc.aio.AioRpcError as e:
                    got = e.code().name
                except _Status as e:
                    got = e.code.name
                cells += 1
                if got != want:
                    wrong.append(f"{rpc} {target}: got {got}, expected {want}")
        assert app.http is not None
        headers = {k: v for k, v in md}
        async with aiohttp.ClientSession() as http:
            for path in sorted(HTTP):
                url = f"http://127.0.0.1:{app.http.port}{path}"
                async with http.get(url, headers=headers) as r:
                    got = str(r.status)
                cells += 1
                if got != (want := expected(caller, path, "-")):
                    wrong.append(f"GET {path}: got {got}, expected {want}")
    assert not wrong, f"{caller}: {len(wrong)} of {cells} cells wrong:\n" + "\n".join(wrong)
    audit = [r.getMessage() for r in caplog.records if r.name == "pipewarden.audit"]
    if caller in ("none", "unknown"):
        refused = [m for m in audit if m.startswith("authentication refused")]
        assert len(refused) == cells - 2  # all but /healthz and /readyz
        assert not any(TOKENS["admin"] in m or "not-a-configured" in m for m in audit)
    if caller in ("writer", "admin"):
        assert any(m.startswith("alert acknowledged") for m in audit)
        assert any(m.startswith("silence created") for m in audit)
        assert any(m.startswith("silence ended") for m in audit)


async def test_a_team_watcher_sees_only_its_team(tmp_path: Path) -> None:
    cfg = dataclasses.replace(config(tmp_path), tokens=CONFIGURED)
    async with serving(cfg, Clock(NOW)) as (_app, stub):
        watcher = Watcher(stub, metadata=metadata("reader"))  # no team filter: forced to its own
        await watcher.ready()
        admin = metadata("admin")
        await stub.Ingest(request(*failures("p-b", 3, team=OTHER)), metadata=admin)
        await stub.Ingest(request(*failures("p-a", 3, team=OWN)), metadata=admin)
        events = await watcher.wait_count(1)
        await watcher.close()
        assert events and {e.alert.team for e in events} == {OWN}


async def test_a_writer_ingesting_another_teams_rows_counts_none_of_them(tmp_path: Path) -> None:
    cfg = dataclasses.replace(config(tmp_path), tokens=CONFIGURED)
    async with serving(cfg, Clock(NOW)) as (_app, stub):
        r = await stub.Ingest(
            request(run("e1", "mine", OWN), run("e2", "theirs", OTHER)),
            metadata=metadata("writer"),
        )
        assert r.accepted == 1 and [x.index for x in r.rejected] == [1]
        assert "not this token's team" in r.rejected[0].reason
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.GetPipelineHealth(
                service_pb2.GetPipelineHealthRequest(pipeline_id="theirs"),
                metadata=metadata("admin"),
            )
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def _lineage_event(team: str) -> dict[str, Any]:
    return {
        "eventType": "COMPLETE",
        "eventTime": Timestamp(seconds=int(NOW - 60)).ToJsonString(),  # by the server's clock
        "run": {"runId": f"{team}-run-{time.time_ns()}"},
        "job": {
            "namespace": "airflow",
            "name": f"load_{team}",
            "facets": {"ownership": {"owners": [{"name": f"team:{team}"}]}},
        },
        "producer": "test",
    }


@pytest.mark.parametrize(
    ("caller", "team", "status"),
    [
        ("none", OWN, 401),
        ("unknown", OWN, 401),
        ("reader", OWN, 403),
        ("writer", OWN, 201),
        ("writer", OTHER, 403),
        ("admin", OTHER, 201),
    ],
)
async def test_openlineage_events_need_a_writer_of_their_team(
    tmp_path: Path, caller: str, team: str, status: int
) -> None:
    cfg = dataclasses.replace(config(tmp_path), tokens=CONFIGURED)
    async with serving(cfg, Clock(NOW)) as (app, stub):
        assert app.http is not None
        url = f"http://127.0.0.1:{app.http.port}/api/v1/lineage"
        headers = {k: v for k, v in metadata(caller)}
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json=_lineage_event(team), headers=headers) as r,
        ):
            assert r.status == status, await r.text()
        teams = await stub.ListTeamMetrics(
            service_pb2.ListTeamMetricsRequest(), metadata=metadata("admin")
        )
        counted = {t.team: t.total_executions for t in teams.teams}
        assert counted.get(team, 0) == (1 if status == 201 else 0)


@pytest.mark.parametrize(
    ("caller", "team", "status"),
    [("reader", OWN, 403), ("writer", OWN, 201), ("writer", OTHER, 403), ("admin", OTHER, 201)],
)
@pytest.mark.parametrize("shape", ["job", "other"])
async def test_openlineage_lineage_claims_need_a_writer_of_the_jobs_team(
    tmp_path: Path, caller: str, team: str, status: int, shape: str
) -> None:
    """A JobEvent, or a run event that changes no run (OTHER), teaches which job writes a
    dataset: only a writer of the job's team may make that claim."""
    doc = _lineage_event(team)
    doc["outputs"] = [{"namespace": "warehouse", "name": "customers"}]
    if shape == "job":
        del doc["run"], doc["eventType"]
    else:
        doc["eventType"] = "OTHER"
    cfg = dataclasses.replace(config(tmp_path), tokens=CONFIGURED)
    async with serving(cfg, Clock(NOW)) as (app, _stub):
        assert app.http is not None
        url = f"http://127.0.0.1:{app.http.port}/api/v1/lineage"
        headers = {k: v for k, v in metadata(caller)}
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json=doc, headers=headers) as r,
        ):
            assert r.status == status, await r.text()
        writers = app.producers.producers_of(("warehouse", "customers"))
        assert list(writers) == ([f"airflow/load_{team}"] if status == 201 else [])
