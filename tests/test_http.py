"""The HTTP port: health, readiness and Prometheus metrics."""

from __future__ import annotations

import aiohttp

from pipewarden.server.app import App
from pipewarden.v1 import service_pb2_grpc
from tests.support.helpers import request, run


async def test_healthz_readyz_and_metrics(
    app: App, stub: service_pb2_grpc.PipelineMonitorStub
) -> None:
    assert app.http is not None
    base = f"http://127.0.0.1:{app.http.port}"
    await stub.Ingest(request(run("e1"), run("e1"), run("bad", records=-1)))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with session.get(f"{base}/readyz") as r:
            assert r.status == 200
        async with session.get(f"{base}/metrics") as r:
            assert r.status == 200
            text = await r.text()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    # Counters are process-wide (several test servers share them), so only their presence and
    # a lower bound are certain.
    assert values["pipewarden_executions_accepted_total"] >= 1
    assert values["pipewarden_executions_duplicate_total"] >= 1
    assert values["pipewarden_executions_rejected_total"] >= 1
    app.ready = False
    async with aiohttp.ClientSession() as session, session.get(f"{base}/readyz") as r:
        assert r.status == 503
