"""A real Prometheus scrapes a real server's /metrics, and the values read back through its query
API are the health figures; the deploy/ configuration and dashboard refer to what exists."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipewarden.server.app import App
from pipewarden.v1 import service_pb2_grpc
from tests.support.alerting import Clock, alerts, config, eventually, failures, send, serving
from tests.support.helpers import T0, request, run
from tests.support.process import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus binary is not installed (Debian: apt-get install prometheus; "
    ".ci/run installs it)",
)


@pytest.fixture
def prometheus(app: App, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A Prometheus on a free loopback port (its `base` attribute) scraping `app` every
    200 ms."""
    assert PROMETHEUS is not None and app.http is not None
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 200ms, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: pipewarden\n"
        "    scrape_timeout: 200ms\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{app.http.port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    proc.log = tmp_path / "prometheus.log"  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def query(session: aiohttp.ClientSession, base: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector `expr` evaluates to ([] until the data is there)."""
    try:
        async with session.get(f"{base}/api/v1/query", params={"query": expr}) as r:
            if r.status != 200:
                return []
            answer = await r.json()
    except aiohttp.ClientConnectionError:
        return []  # not listening yet
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@needs_prometheus
async def test_prometheus_scrapes_the_health_figures(
    app: App, stub: service_pb2_grpc.PipelineMonitorStub, prometheus: Any
) -> None:
    await stub.Ingest(
        request(
            run("e1", "etl.orders", "payments", duration=30, records=300),
            # Two failures after the success, by event time.
            run("e2", "etl.orders", "payments", "failed", start=T0 + 60, duration=10),
            run("e3", "etl.orders", "payments", "failed", start=T0 + 90, duration=20),
            run("e4", "etl.refunds", "payments", duration=5, records=5),
        )
    )
    wanted = {
        'pipewarden_pipeline_success_rate{pipeline="etl.orders"}': 1 / 3,
        'pipewarden_pipeline_avg_duration_seconds{pipeline="etl.orders"}': 20.0,
        'pipewarden_pipeline_consecutive_failures{pipeline="etl.orders"}': 2.0,
        'pipewarden_team_success_rate{team="payments"}': 2 / 4,
        'pipewarden_team_executions_total{team="payments",status="failed"}': 2.0,
        'up{job="pipewarden"}': 1.0,
    }
    got: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        base = prometheus.base
        while len(got) < len(wanted) and loop.time() < deadline:
            assert prometheus.poll() is None, prometheus.log.read_text()
            for expr in wanted:
                result = await query(session, base, expr)
                if result:
                    got[expr] = float(result[0]["value"][1])
            await asyncio.sleep(0.2)
        # Prometheus also computes with them: the fleet's success rate, as a dashboard does.
        fleet = await query(
            session,
            base,
            'sum(pipewarden_team_executions_total{status="succeeded"}) / '
            'sum(pipewarden_team_executions_total{status=~"succeeded|failed"})',
        )
    assert got == pytest.approx(wanted), f"read back {got}"
    assert float(fleet[0]["value"][1]) == pytest.approx(0.5)


def test_deploy_prometheus_config_is_valid() -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (it comes with Debian's prometheus package)")
    done = subprocess.run(
        [PROMTOOL, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_metrics() -> set[str]:
    """Every pipewarden_* name the dashboard's queries use, without exposition suffixes."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "pipewarden.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][0]["definition"])
    assert exprs
    return {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for e in exprs
        for name in re.findall(r"\bpipewarden_[a-z_]+", e)
    }


async def test_dashboard_queries_name_metrics_that_exist(
    app: App, stub: service_pb2_grpc.PipelineMonitorStub
) -> None:
    assert app.http is not None
    await stub.Ingest(request(run("e1", "p", "t"), run("e2", "p", "t", "running")))
    await app.snapshot()
    url = f"http://127.0.0.1:{app.http.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        text = await r.text()
    exported = {f.name for f in text_string_to_metric_families(text)}
    used = dashboard_metrics()
    assert "pipewarden_pipeline_success_rate" in used
    missing = used - exported
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"


async def test_open_alerts_by_team_and_severity(tmp_path: Path) -> None:
    """pipewarden_alerts_firing counts open alerts: three failures in a row of one pipeline
    of team-a are one HIGH alert; five of another of team-b one CRITICAL."""
    clock = Clock(T0 + 10 * 3600)
    async with serving(config(tmp_path), clock) as (app, stub):
        await send(stub, *failures("a1", 3), *failures("b1", 5, team="team-b"))
        await eventually(lambda: alerts(stub), lambda found: len(found) == 2)
        families = {
            f.name: f
            for f in text_string_to_metric_families(generate_latest(app.registry).decode())
        }
        samples = {
            (s.labels["team"], s.labels["severity"]): s.value
            for s in families["pipewarden_alerts_firing"].samples
        }
        assert samples == {("team-a", "high"): 1.0, ("team-b", "critical"): 1.0}
