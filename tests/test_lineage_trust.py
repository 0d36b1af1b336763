"""Lineage another team claims never mutes a team's pages unless that team trusts it: whether
the lineage came over OpenLineage (a JobEvent naming another team's dataset) or over gRPC
(`upstream_pipeline_ids` naming another team's pipeline). The alert still notifies and shows
the likely cause; a team's own lineage, and a trusted team's, still explain and mute."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipewarden.server.alerting.lineage import Lineage, TeamTrust, root_causes
from pipewarden.server.base.errors import ConfigError
from pipewarden.server.config import Config, parse
from pipewarden.server.openlineage.settings import OpenLineageSettings
from tests.support.alerting import FIRED, Clock, Watcher, alerts, config, failures, send, serving
from tests.support.helpers import T0
from tests.support.lineage import at

NOW = T0 + 100 * 3600
TEAMS = {"nsa": "team-a", "nsb": "team-b"}


def ol_config(tmp_path: Path, **alerts: Any) -> Config:
    cfg = config(tmp_path, **alerts)
    return dataclasses.replace(cfg, openlineage=OpenLineageSettings(namespace_teams=TEAMS))


async def post(port: int, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/lineage"
    async with aiohttp.ClientSession() as session, session.post(url, json=doc) as r:
        return r.status, await r.json()


def fail(namespace: str, name: str, hour: int, inputs: tuple[tuple[str, str], ...] = ()) -> Any:
    return {
        "eventType": "FAIL",
        "eventTime": at(hour * 3600),
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": namespace, "name": name},
        "inputs": [{"namespace": ns, "name": n} for ns, n in inputs],
        "producer": "tests",
    }


async def another_teams_claim_then_both_fail(app: Any) -> None:
    """Team A's writer claims B's input as its job's output; then both jobs fail."""
    port = app.http.port
    claim = {
        "job": {"namespace": "nsa", "name": "fake"},
        "outputs": [{"namespace": "warehouse", "name": "customers"}],
        "producer": "tests",
    }
    assert (await post(port, claim))[0] == 201
    for hour in range(3):
        assert (await post(port, fail("nsa", "fake", hour)))[0] == 201
    for hour in range(3):
        status, _ = await post(port, fail("nsb", "report", hour, (("warehouse", "customers"),)))
        assert status == 201


async def test_another_teams_dataset_claim_does_not_mute_the_page(tmp_path: Path) -> None:
    async with serving(ol_config(tmp_path), Clock(NOW)) as (app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await another_teams_claim_then_both_fail(app)
        events = await watcher.wait_for(
            lambda es: (
                {e.alert.pipeline_id for e in es if e.type == FIRED} >= {"nsa/fake", "nsb/report"}
            )
        )
        fired = {e.alert.pipeline_id: e for e in events if e.type == FIRED}
        b = fired["nsb/report"]
        assert b.notify, "team B's page was muted by team A's lineage"
        assert b.alert.caused_by == ""
        assert b.alert.untrusted_cause == "nsa/fake"
        assert "likely caused by upstream nsa/fake (team team-a)" in b.reason
        listed = {a.pipeline_id: a for a in await alerts(stub)}
        assert listed["nsb/report"].untrusted_cause == "nsa/fake"
        assert list(listed["nsa/fake"].impacted_pipelines) == []  # A explains nothing of B's
        # The timer's full judgement keeps it so.
        app.partition.alerts.tick()
        listed = {a.pipeline_id: a for a in await alerts(stub)}
        assert listed["nsb/report"].caused_by == ""
        assert listed["nsb/report"].untrusted_cause == "nsa/fake"
        await watcher.close()


async def test_a_trusted_teams_claim_explains_and_mutes(tmp_path: Path) -> None:
    cfg = ol_config(tmp_path, trusted_teams={"team-b": ("team-a",)})
    async with serving(cfg, Clock(NOW)) as (app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await another_teams_claim_then_both_fail(app)
        events = await watcher.wait_for(
            lambda es: (
                {e.alert.pipeline_id for e in es if e.type == FIRED} >= {"nsa/fake", "nsb/report"}
            )
        )
        fired = {e.alert.pipeline_id: e for e in events if e.type == FIRED}
        assert not fired["nsb/report"].notify
        assert fired["nsb/report"].alert.caused_by == "nsa/fake"
        assert fired["nsb/report"].alert.untrusted_cause == ""
        await watcher.close()


async def test_grpc_upstream_of_another_team_does_not_mute(tmp_path: Path) -> None:
    """B names A (another team's pipeline) upstream, and C, B's teammate, names B: A's alert
    does not mute B's page, and B's (same team) still explains C's."""
    async with serving(config(tmp_path), Clock(NOW)) as (_app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await send(
            stub,
            *failures("A", 3, team="team-a"),
            *failures("B", 3, team="team-b", upstream=["A"]),
            *failures("C", 3, team="team-b", upstream=["B"]),
        )
        events = await watcher.wait_count(3)
        fired = {e.alert.pipeline_id: e for e in events}
        assert fired["A"].notify and fired["B"].notify
        assert (fired["B"].alert.caused_by, fired["B"].alert.untrusted_cause) == ("", "A")
        assert not fired["C"].notify and fired["C"].alert.caused_by == "B"
        listed = {a.pipeline_id: a for a in await alerts(stub)}
        assert list(listed["B"].impacted_pipelines) == ["C"]
        assert list(listed["A"].impacted_pipelines) == []
        await watcher.close()


async def test_a_pipeline_squatting_an_upstream_id_does_not_mute(tmp_path: Path) -> None:
    """B names "loader" upstream before any such pipeline exists; team A then creates a
    pipeline "loader" and makes it fail: B's page is not muted."""
    async with serving(config(tmp_path), Clock(NOW)) as (_app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await send(stub, *failures("B", 1, team="team-b", upstream=["loader"]))
        await send(stub, *failures("loader", 3, team="team-a"))
        await send(stub, *failures("B", 2, start=1, team="team-b", upstream=["loader"]))
        events = await watcher.wait_count(2)
        b = next(e for e in events if e.alert.pipeline_id == "B")
        assert b.notify and b.alert.untrusted_cause == "loader" and not b.alert.caused_by
        await watcher.close()


@pytest.mark.parametrize(
    ("trusted", "down", "up", "expected"),
    [
        ({}, "b", "b", True),
        ({}, "b", "a", False),
        ({"b": ("a",)}, "b", "a", True),
        ({"b": ("a",)}, "a", "b", False),  # not symmetric
        ({"b": ("*",)}, "b", "c", True),
        ({"*": ("platform",)}, "b", "platform", True),
        ({"*": ("platform",)}, "b", "c", False),
        ({"*": ("*",)}, "b", "c", True),
        ({"*": ("*",)}, "b", "", False),  # an unknown team is never trusted
    ],
)
def test_team_trust(
    trusted: dict[str, tuple[str, ...]], down: str, up: str, expected: bool
) -> None:
    assert TeamTrust(trusted)(down, up) is expected


def test_root_causes_follow_trusted_edges_only() -> None:
    lineage = Lineage(TeamTrust())
    for pid, upstream, team in (("X", (), "a"), ("B", ("X",), "b"), ("C", ("B",), "b")):
        lineage.update(pid, upstream, team)
    open_ = {"X", "B", "C"}
    assert root_causes(lineage, open_) == {"X": "", "B": "", "C": "B"}
    assert root_causes(lineage, open_, trusted=False) == {"X": "", "B": "X", "C": "X"}


def test_trusted_teams_configuration() -> None:
    cfg = parse({"alerts": {"trusted_teams": {"payments": ["platform"], "*": ["core"]}}})
    assert cfg.alerts.trusted_teams == {"payments": ("platform",), "*": ("core",)}
    assert parse({}).alerts.trusted_teams == {}
    for bad, key in (
        ({"trusted_teams": ["x"]}, "alerts.trusted_teams"),
        ({"trusted_teams": {"payments": "platform"}}, "alerts.trusted_teams.payments"),
        ({"trusted_teams": {"payments": [3]}}, "alerts.trusted_teams.payments"),
        ({"trusted_teams": {"": ["x"]}}, "alerts.trusted_teams"),
    ):
        with pytest.raises(ConfigError) as info:
            parse({"alerts": bad})
        assert info.value.key == key, bad
