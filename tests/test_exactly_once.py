"""Exactly-once counting that no client can break, against the real server: an execution is its
pipeline and its id together; event times far ahead of the server's clock are refused; what one
team sends never shortens another team's window; and a data directory written before all this
(commit 5cfd622) starts and counts the same."""

from __future__ import annotations

import json
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from pipewarden.client import execution
from pipewarden.server.app import App
from pipewarden.server.base.errors import ConfigError
from pipewarden.server.config import parse
from pipewarden.server.core.limits import IngestLimits
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.config import make_config
from tests.support.helpers import T0, request, run
from tests.support.process import ServerProcess

AIRFLOW = "scheduled__2026-11-26T00:00:00+00:00"  # Airflow's run ids are unique per DAG only
YEAR_9999 = 253_402_300_000.0  # 9999-12-31, within what a Timestamp holds
BASE = Path(__file__).parent / "data" / "base-5cfd622"  # written by commit 5cfd622 (make.py)
SKEW_KEY = "server.limits.max_future_skew_seconds"

Stub = service_pb2_grpc.PipelineMonitorStub


def runs(prefix: str, count: int, pipeline: str, team: str) -> list[Any]:
    return [run(f"{prefix}-{i}", pipeline, team, start=T0 + i) for i in range(count)]


async def send(stub: Stub, executions: list[Any], size: int = 4096) -> tuple[int, int, list[str]]:
    """Accepted, duplicates and the reasons of the rejected, over requests of `size`."""
    accepted = duplicates = 0
    reasons: list[str] = []
    for at in range(0, len(executions), size):
        answer = await stub.Ingest(request(*executions[at : at + size]))
        accepted += answer.accepted
        duplicates += answer.duplicates
        reasons += [r.reason for r in answer.rejected]
    return accepted, duplicates, reasons


async def health(stub: Stub, pipeline: str) -> Any:
    return await stub.GetPipelineHealth(service_pb2.GetPipelineHealthRequest(pipeline_id=pipeline))


async def total(stub: Stub, team: str) -> int:
    metrics = await stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team=team))
    return int(metrics.total_executions)


# -- one team's events never shorten another team's window ------------------------------------


async def test_one_future_dated_run_does_not_wipe_duplicate_detection_for_every_team(
    stub: Stub,
) -> None:
    """The issue's report, as it happened: team A's resend after team B's year-9999 run."""
    a = runs("a", 10_000, "a.loads", "team-a")
    assert await send(stub, a) == (10_000, 0, [])
    assert await send(stub, a) == (0, 10_000, [])
    future = run("b-9999", "b.loads", "team-b", start=T0, duration=YEAR_9999 - T0)
    accepted, _, reasons = await send(stub, [future, *runs("b", 16_384, "b.loads", "team-b")])
    assert await send(stub, a) == (0, 10_000, [])  # A's resend: all duplicates still
    assert await total(stub, "team-a") == 10_000
    assert accepted == 16_384
    assert len(reasons) == 1 and "finished_at (9999-12-31" in reasons[0] and SKEW_KEY in reasons[0]


async def test_a_backfill_of_old_runs_is_remembered_as_long_as_todays(stub: Stub) -> None:
    """Retention runs from when the server received a run, not from when the runner says it
    happened: a backfill of 2020's runs stays deduplicated while newer runs arrive."""
    year_2020 = 1_580_000_000.0
    backfill = [run(f"old-{i}", "a.backfill", "team-a", start=year_2020 + i) for i in range(5000)]
    assert await send(stub, backfill) == (5000, 0, [])
    assert await send(stub, runs("b", 8192, "b.loads", "team-b")) == (8192, 0, [])
    assert await send(stub, backfill) == (0, 5000, [])
    assert await total(stub, "team-a") == 5000


@pytest.mark.parametrize("server_options", [{"max_seen_executions": 1000}])
async def test_a_team_flooding_ids_forgets_its_own_before_another_teams(stub: Stub) -> None:
    a = runs("a", 300, "a.loads", "team-a")
    assert await send(stub, a) == (300, 0, [])
    flood = runs("b", 5000, "b.loads", "team-b")
    assert await send(stub, flood, size=500) == (5000, 0, [])
    assert await send(stub, a) == (0, 300, [])  # A holds less than its fair share: all kept
    assert await total(stub, "team-a") == 300
    # B's own oldest went: 700 of its ids remain (1000 - 300), the newest.
    assert await send(stub, flood[-700:]) == (0, 700, [])
    assert await send(stub, flood[:100]) == (100, 0, [])


# -- event times far ahead of the server's clock ------------------------------------------------


def _at(seconds: float) -> float:
    return time.time() + seconds


@pytest.mark.parametrize("server_options", [{"limits": IngestLimits(max_future_skew_seconds=3600)}])
async def test_event_times_beyond_the_skew_are_rejected_with_a_reason(stub: Stub) -> None:
    hour = 3600.0
    refused = [
        (run("s", "p.skew", "t", start=_at(2 * hour)), "started_at ("),
        (run("f", "p.skew", "t", start=_at(0), duration=2 * hour), "finished_at ("),
        (
            execution("d", "p.skew", "t", "succeeded", started_at=_at(hour - 60), duration=600),
            "started_at + duration (",
        ),
        (run("r", "p.skew", "t", "running", start=_at(2 * hour)), "started_at ("),
    ]
    answer = await stub.Ingest(request(*(msg for msg, _ in refused)))
    assert (answer.accepted, answer.duplicates) == (0, 0)
    assert [r.index for r in answer.rejected] == [0, 1, 2, 3]
    for (_, field), rejected in zip(refused, answer.rejected, strict=True):
        assert rejected.reason.startswith(field), rejected.reason
        assert "more than 3600s ahead of the server's clock" in rejected.reason
        assert SKEW_KEY in rejected.reason
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await health(stub, "p.skew")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND  # nothing of them was kept
    # Just inside the skew: accepted, and counted once.
    inside = [
        run("in-1", "p.skew", "t", start=_at(hour - 120), duration=60),
        execution("in-2", "p.skew", "t", "failed", started_at=_at(hour - 200), duration=100),
        run("in-3", "p.skew", "t", "running", start=_at(hour - 60)),
    ]
    answer = await stub.Ingest(request(*inside))
    assert (answer.accepted, len(answer.rejected)) == (2, 0)
    assert (await health(stub, "p.skew")).total_executions == 2


def test_the_skew_is_configured_under_server_limits() -> None:
    assert IngestLimits().max_future_skew_seconds == 86_400
    doc = {"server": {"limits": {"max_future_skew_seconds": 300}}}
    assert parse(doc).server.limits.max_future_skew_seconds == 300
    for bad, why in ((0, "0 is less than 1"), (1.5, "expected a whole number")):
        with pytest.raises(ConfigError) as e:
            parse({"server": {"limits": {"max_future_skew_seconds": bad}}})
        assert SKEW_KEY in str(e.value) and why in str(e.value)


async def test_a_year_9999_openlineage_event_is_refused_and_counts_nothing(
    app: App, stub: Stub
) -> None:
    assert app.http is not None
    doc = {
        "eventType": "COMPLETE",
        "eventTime": "9999-12-31T00:00:00Z",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "ns", "name": "late"},
        "producer": "curl",
    }
    url = f"http://127.0.0.1:{app.http.port}/api/v1/lineage"
    async with aiohttp.ClientSession() as session, session.post(url, json=doc) as r:
        assert r.status == 400
        answer = await r.json()
    assert "9999-12-31" in answer["message"] and SKEW_KEY in answer["message"]
    assert len(app.partition.shards) == 0


# -- an execution is its pipeline and its id together --------------------------------------------


async def test_two_pipelines_sharing_a_run_id_both_count(stub: Stub) -> None:
    both = [run(AIRFLOW, "sales.orders", "sales"), run(AIRFLOW, "sales.refunds", "sales")]
    assert await send(stub, both) == (2, 0, [])
    assert await send(stub, both) == (0, 2, [])
    # A dbt invocation id is shared by every model of one run.
    models = [run("invocation-7", f"dbt.model_{m}", "sales") for m in range(3)]
    assert await send(stub, [*models, models[0]]) == (3, 1, [])
    for pipeline in ("sales.orders", "sales.refunds", "dbt.model_0", "dbt.model_2"):
        assert (await health(stub, pipeline)).total_executions == 1
    # Runs in flight too: each pipeline's run is its own.
    started = [
        run("run-9", "sales.orders", "sales", "running"),
        run("run-9", "sales.refunds", "sales", "running"),
    ]
    answer = await stub.Ingest(request(*started))
    assert (answer.accepted, answer.duplicates, len(answer.rejected)) == (0, 0, 0)
    assert [(await health(stub, p)).in_flight for p in ("sales.orders", "sales.refunds")] == [1, 1]
    finished = [run("run-9", "sales.orders", "sales"), run("run-9", "sales.refunds", "sales")]
    assert await send(stub, finished) == (2, 0, [])
    assert [(await health(stub, p)).in_flight for p in ("sales.orders", "sales.refunds")] == [0, 0]


@pytest.mark.parametrize(
    "stop", [signal.SIGTERM, signal.SIGKILL], ids=["from-the-snapshot", "from-the-log"]
)
async def test_each_pipelines_run_is_still_a_duplicate_after_a_restart(
    tmp_path: Path, stop: signal.Signals
) -> None:
    data = tmp_path / "data"
    both = request(run(AIRFLOW, "sales.orders", "sales"), run(AIRFLOW, "sales.refunds", "sales"))
    first = ServerProcess(data)
    first.wait_serving()
    try:
        async with grpc.aio.insecure_channel(first.target) as channel:
            answer = await Stub(channel).Ingest(both)
            assert (answer.accepted, answer.duplicates) == (2, 0)
    finally:
        first.stop(stop)
    second = ServerProcess(data)
    second.wait_serving()
    try:
        async with grpc.aio.insecure_channel(second.target) as channel:
            stub = Stub(channel)
            answer = await stub.Ingest(both)
            assert (answer.accepted, answer.duplicates) == (0, 2)
            answer = await stub.Ingest(request(run(AIRFLOW, "sales.returns", "sales")))
            assert (answer.accepted, answer.duplicates) == (1, 0)
            for pipeline in ("sales.orders", "sales.refunds"):
                assert (await health(stub, pipeline)).total_executions == 1
    finally:
        assert second.stop() == 0


# -- a data directory of the base commit ----------------------------------------------------------


def _totals(h: Any) -> list[int]:
    """As the base's tests.durability.Node.totals: succeeded, failed, cancelled, records."""
    records = round(h.avg_records_processed * (h.succeeded + h.failed))
    return [h.succeeded, h.failed, h.cancelled, records]


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_a_data_directory_of_an_older_format_starts_and_counts_the_same(
    tmp_path: Path, version: str
) -> None:
    facts = json.loads((BASE / "facts.json").read_text())
    shutil.copytree(BASE / version, tmp_path / "data")
    config = make_config(tmp_path)
    node = App(config)
    await node.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            stub = Stub(channel)
            for pipeline, want in facts["totals"].items():
                assert _totals(await health(stub, pipeline)) == want
            # Every execution counted before the upgrade is a duplicate for its pipeline...
            resent = [
                run("run-1", "sales.orders", "sales"),
                run("run-2", "sales.orders", "sales", "failed"),
                run(AIRFLOW, "sales.orders", "sales"),
                run("tail-1", "sales.orders", "sales"),
                run("tail-2", "sales.refunds", "sales", "cancelled"),
            ]
            assert await send(stub, resent) == (0, 5, [])
            # ...and an id of the old snapshot for any pipeline (it kept bare ids), as that
            # code said too: nothing counted before the upgrade is counted again.
            assert await send(stub, [run(AIRFLOW, "sales.refunds", "sales")]) == (0, 1, [])
            # The log after that snapshot is replayed by pipeline and id.
            assert await send(stub, [run("tail-1", "sales.refunds", "sales")]) == (1, 0, [])
    finally:
        await node.close()  # a snapshot of the current format, with the old bare ids in it
    again = App(config)
    await again.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{again.grpc_port}") as channel:
            stub = Stub(channel)
            assert _totals(await health(stub, "sales.orders")) == facts["totals"]["sales.orders"]
            assert await send(stub, [run(AIRFLOW, "other.dag", "sales")]) == (0, 1, [])
            assert await send(stub, [run("tail-1", "sales.refunds", "sales")]) == (0, 1, [])
            assert await send(stub, [run("tail-1", "other.dag", "sales")]) == (1, 0, [])
    finally:
        await again.close()
