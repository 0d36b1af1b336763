"""Query latency with 10,000 pipelines loaded.

A fresh Pipewarden gets 10,000 pipelines of three executions each; then the client, with the
generated stub as any user would, calls one RPC at a time and times each: GetPipelineHealth on
random pipeline ids, and ListPipelineHealth (100 a page) walking every page of a random team
filter, or of no filter, before drawing the next. The client's garbage collector is off while
it times, so its pauses are not counted as the server's.
"""

from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass
from typing import Any

import grpc

from bench import loadgen
from bench.common import STORE, Context, SectionResult, Target, summarize_ms
from bench.workload import Fleet
from pipewarden.v1 import service_pb2, service_pb2_grpc

__all__ = ["NAME", "TITLE", "run"]

NAME = "queries"
TITLE = "Query latency"

RUNS_PER_PIPELINE = 3
PAGE_SIZE = 100
P99_TARGET = Target("<", 5.0, "ms")
LOAD_SECONDS = 120.0
"""The most loading the pipelines may take."""


def _plan(quick: bool) -> tuple[int, int]:
    """Pipelines to load, and calls of each kind to time."""
    return (2_000, 300) if quick else (10_000, 3_000)


# -- in the client worker -------------------------------------------------------------------------


def _load(target: str, pipelines: int) -> dict[str, Any]:
    fleet = STORE["fleet"] = Fleet(pipelines)
    order = [p for _ in range(RUNS_PER_PIPELINE) for p in range(pipelines)]
    return loadgen.blast(target, fleet.requests(order, 1000), streams=4, max_seconds=LOAD_SECONDS)


@dataclass
class _Walk:
    """Where the walk through ListPipelineHealth pages is."""

    team: str = ""
    token: str = ""
    pipelines: int = 0


def _time_queries(target: str, calls: int) -> dict[str, Any]:
    fleet: Fleet = STORE["fleet"]
    rng = random.Random(11)
    filters = ["", *fleet.teams]
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)

        def get() -> float:
            pid = fleet.pipeline_ids[rng.randrange(fleet.size)]
            began = time.perf_counter()
            health = stub.GetPipelineHealth(
                service_pb2.GetPipelineHealthRequest(pipeline_id=pid), timeout=10
            )
            took = time.perf_counter() - began
            assert health.pipeline_id == pid and health.total_executions == RUNS_PER_PIPELINE
            return took

        walk = _Walk()

        def page() -> float:
            if not walk.token:
                walk.team = rng.choice(filters)
            request = service_pb2.ListPipelineHealthRequest(
                team=walk.team, page_size=PAGE_SIZE, page_token=walk.token
            )
            began = time.perf_counter()
            response = stub.ListPipelineHealth(request, timeout=10)
            took = time.perf_counter() - began
            assert len(response.pipelines) <= PAGE_SIZE
            walk.token = response.next_page_token
            walk.pipelines += len(response.pipelines)
            return took

        for _ in range(max(50, calls // 20)):  # warm up connection and code paths
            get()
            page()
        walk = _Walk()
        gc.collect()
        gc.disable()
        try:
            gets = [get() for _ in range(calls)]
            lists = [page() for _ in range(calls)]
        finally:
            gc.enable()
    return {"get": gets, "list": lists, "listed_pipelines": walk.pipelines}


# -- in the harness -------------------------------------------------------------------------------


def run(ctx: Context) -> SectionResult:
    """Measure GetPipelineHealth and ListPipelineHealth latency."""
    res = SectionResult(NAME, TITLE)
    pipelines, calls = _plan(ctx.quick)
    with ctx.worker() as worker, ctx.pipewarden("queries-pipewarden") as server:
        loaded = worker.call(_load, server.target, pipelines, timeout=LOAD_SECONDS + 60)
        if loaded["accepted"] != pipelines * RUNS_PER_PIPELINE:
            raise RuntimeError(f"loading did not count every execution: {loaded}")
        ctx.log(
            f"queries: loaded {pipelines:,} pipelines ({loaded['accepted']:,} executions) in "
            f"{loaded['seconds']:.1f}s"
        )
        out = worker.call(_time_queries, server.target, calls, timeout=180)
        server.check_alive()
    get, listed = summarize_ms(out["get"]), summarize_ms(out["list"])
    res.details.update(
        pipelines=pipelines,
        executions_per_pipeline=RUNS_PER_PIPELINE,
        page_size=PAGE_SIZE,
        load=loaded,
        get_pipeline_health_ms=get,
        list_pipeline_health_ms=listed,
        listed_pipelines=out["listed_pipelines"],
    )
    at = f"{pipelines:,} pipelines"
    for label, stats in (("GetPipelineHealth", get), ("ListPipelineHealth (100/page)", listed)):
        res.add(f"{label} p50, {at}", stats["p50"], "ms", note=f"{stats['count']:,} calls")
        res.add(
            f"{label} p99, {at}",
            stats["p99"],
            "ms",
            P99_TARGET,
            note=f"p90 {stats['p90']:.2f} ms, max {stats['max']:.2f} ms",
        )
    return res
