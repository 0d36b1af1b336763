"""/metrics: the pipelines' and teams' health read at scrape time, the cap on per-pipeline
series, and the node's own health (fsync latency, snapshot time, queue depths)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipewarden.server.api.collector import MetricsSettings, worst_first
from pipewarden.server.app import App
from pipewarden.server.base.errors import ConfigError
from pipewarden.server.config import parse
from pipewarden.server.core.shards import ShardSet
from pipewarden.v1 import service_pb2_grpc
from tests.support.config import make_config
from tests.support.helpers import request, run

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(app: App) -> Samples:
    """Every sample on /metrics, by name and sorted labels."""
    assert app.http is not None
    url = f"http://127.0.0.1:{app.http.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_pipeline_and_team_health(
    app: App, stub: service_pb2_grpc.PipelineMonitorStub
) -> None:
    await stub.Ingest(
        request(
            run("a1", "etl.a", "red", duration=10, records=100),
            run("a2", "etl.a", "red", "failed", duration=30, records=50),
            run("a3", "etl.a", "red", "failed", duration=20, records=0),
            run("a4", "etl.a", "red", "cancelled"),
            run("b1", "etl.b", "red", duration=5, records=10),
            run("b2", "etl.b", "red", "running"),
            run("c1", "etl.c", "blue", duration=1, records=1),
        )
    )
    m = await scrape(app)
    a = (("pipeline", "etl.a"), ("team", "red"))
    assert m[("pipewarden_pipeline_success_rate", a)] == pytest.approx(1 / 3)
    assert m[("pipewarden_pipeline_avg_duration_seconds", a)] == pytest.approx(20.0)
    assert m[("pipewarden_pipeline_avg_records", a)] == pytest.approx(50.0)
    assert m[("pipewarden_pipeline_consecutive_failures", a)] == 2
    for status, count in (("succeeded", 1), ("failed", 2), ("cancelled", 1)):
        labels = tuple(sorted((*a, ("status", status))))
        assert m[("pipewarden_pipeline_executions_total", labels)] == count
    b = (("pipeline", "etl.b"), ("team", "red"))
    assert m[("pipewarden_pipeline_in_flight", b)] == 1
    assert m[("pipewarden_pipeline_last_execution_timestamp_seconds", b)] > 1e9
    red = (("team", "red"),)
    assert m[("pipewarden_team_pipelines", red)] == 2
    assert m[("pipewarden_team_failing_pipelines", red)] == 1  # a2 ends last, failed
    assert m[("pipewarden_team_success_rate", red)] == pytest.approx(2 / 4)
    assert m[("pipewarden_team_avg_duration_seconds", red)] == pytest.approx(65 / 4)
    assert m[("pipewarden_team_avg_records", red)] == pytest.approx(160 / 4)
    assert m[("pipewarden_team_executions_total", (("status", "failed"), *red))] == 2
    assert m[("pipewarden_pipeline_series_omitted", ())] == 0
    # The process-wide counters come along on the node's registry.
    assert m[("pipewarden_executions_accepted_total", ())] >= 6
    # Queue depths and readiness, read at scrape time.
    assert m[("pipewarden_ready", ())] == 1
    assert m[("pipewarden_log_unsynced_entries", ())] == 0
    assert m[("pipewarden_log_bytes", ())] > 0
    assert ("pipewarden_detection_pending_pipelines", ()) in m
    # The log's fsync latency (fsync: always) and snapshot time.
    assert m[("pipewarden_log_fsync_seconds_count", ())] >= 1
    before = m.get(("pipewarden_snapshot_seconds_count", ()), 0)
    await app.snapshot()
    m = await scrape(app)
    assert m[("pipewarden_snapshot_seconds_count", ())] == before + 1


async def test_the_cap_keeps_the_worst_pipelines_and_every_team(tmp_path: Path) -> None:
    config = dataclasses.replace(
        make_config(tmp_path), metrics=MetricsSettings(max_pipeline_series=2)
    )
    app = App(config)
    await app.start()
    try:
        app.partition.ingestor.ingest(
            b"",
            request(
                *(run(f"ok{i}", f"fine.{i}", "green") for i in range(5)),
                run("x1", "bad.one", "red", "failed"),
                run("y1", "bad.two", "red", "failed"),
                run("y2", "bad.two", "red", "failed"),
                run("z1", "meh", "blue"),
                run("z2", "meh", "blue", "failed"),
            ),
        )
        m = await scrape(app)
    finally:
        await app.close()
    shown = {
        dict(labels)["pipeline"] for name, labels in m if name == "pipewarden_pipeline_success_rate"
    }
    assert shown == {"bad.one", "bad.two"}
    assert m[("pipewarden_pipeline_series_omitted", ())] == 6
    teams = {dict(labels)["team"] for name, labels in m if name == "pipewarden_team_pipelines"}
    assert teams == {"green", "red", "blue"}


def test_worst_first_orders_by_streak_then_success_rate() -> None:
    shards = ShardSet(2, 8)
    states = {}
    for pid, streak, ok, bad in (("a", 0, 9, 1), ("b", 3, 0, 3), ("c", 0, 1, 1), ("d", 0, 0, 0)):
        s = shards.create(pid, "t")
        s.consecutive_failures, s.succeeded, s.failed = streak, ok, bad
        states[pid] = s
    assert [s.pipeline_id for s in sorted(states.values(), key=worst_first)] == [
        "b",
        "c",
        "a",
        "d",
    ]


def test_metrics_configuration() -> None:
    assert parse({"metrics": {"max_pipeline_series": 0}}).metrics.max_pipeline_series == 0
    for bad, key in (
        ({"metrics": {"max_pipeline_series": -1}}, "metrics.max_pipeline_series"),
        ({"metrics": {"cap": 1}}, "metrics.cap"),
    ):
        with pytest.raises(ConfigError) as info:
            parse(bad)
        assert info.value.key == key, bad
