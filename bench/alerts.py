"""Alert latency: from ingesting the run that makes an anomaly to the WatchAlerts event arriving.

A client subscribes to WatchAlerts, then sends probes at a steady pace: each probe is the third
failure in a row of a pipeline that already had two (set up beforehand), which raises a
CONSECUTIVE_FAILURES anomaly and fires an alert. The latency of a probe is the time from just
before its Ingest call to the arrival of its FIRED event, measured in the client; it includes
the Ingest answer's fsync, detection, the alert record's fsync (events are published only once
durable) and the stream. Twice: on an otherwise idle server, and while one StreamIngest stream
sends a steady background load of realistic runs of a 5,000-pipeline fleet (1,000 events/s: each
pipeline runs every 5 s, far more often than real ones, which run every few minutes at most).

Each probe's failure streak reaches its alerting length, so it is judged in its own Ingest
request (see server/partition/scheduling.py, DetectionLoop.judge_now). Other anomalies are
judged in detection passes, which take at most about a ninth of a busy process: a load that
touches more distinct pipelines a second than that can judge makes those wait for the backlog.
A third run, as context without a target: 5,000 events/s, every pipeline each second.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import grpc

from bench import loadgen
from bench.common import STORE, Context, SectionResult, Target, summarize_ms
from bench.probes import pipeline as probe_pipeline
from bench.probes import prepare as prepare_probes
from bench.workload import Fleet
from pipewarden.v1 import alert_pb2, service_pb2

__all__ = ["NAME", "TITLE", "run"]

NAME = "alerts"
TITLE = "Alert latency: the run that makes an anomaly to its WatchAlerts event"

TARGET = Target("<", 50.0, "ms")
PROBE_RATE = 20.0
"""Probes per second."""
PIPELINES = 5000
LOAD_SIZE = 100
SCENARIOS = (("idle", 0.0), ("load", 10.0), ("overload", 50.0))
"""Background load of each run, in requests per second of LOAD_SIZE executions."""
TARGETED = ("idle", "load")
INGEST = "/pipewarden.v1.PipelineMonitor/Ingest"
PROBE_TIMEOUT = 5.0


def _plan(quick: bool) -> tuple[int, float]:
    """Probes per run, and the background load's seconds."""
    return (60, 3.0 + 60 / PROBE_RATE) if quick else (600, 3.0 + 600 / PROBE_RATE)


# -- in the client worker -------------------------------------------------------------------------


def _probe_pipeline(label: str, i: int) -> str:
    return probe_pipeline("alert-probe", label, i)


def _setup(target: str, probes: int, labels: list[str]) -> dict[str, Any]:
    """Warm the fleet up and give every probe pipeline two failures; keep the probes' third
    failures and the background load as bytes in STORE."""
    return prepare_probes(
        target, "alert-probe", labels, probes, 2, pipelines=PIPELINES, load_size=LOAD_SIZE
    )


def _measure(target: str, label: str, seconds: float, rate: float) -> dict[str, Any]:
    """Run the probes of `label` with `rate` background requests a second."""
    background: list[bytes] = []
    if rate:
        fleet: Fleet = STORE["fleet"]
        count = int(rate * seconds) + 1
        background = fleet.requests(fleet.random_order(count * LOAD_SIZE, 11), LOAD_SIZE)
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(_probe_run(target, STORE[f"probes-{label}"], label, background, rate))
    finally:
        gc.enable()


async def _probe_run(
    target: str, probes: list[bytes], label: str, background: list[bytes], rate: float
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        ingest: Any = channel.unary_unary(
            INGEST, request_serializer=None, response_deserializer=None
        )
        watch = channel.unary_stream(
            "/pipewarden.v1.PipelineMonitor/WatchAlerts",
            request_serializer=service_pb2.WatchAlertsRequest.SerializeToString,
            response_deserializer=alert_pb2.AlertEvent.FromString,
        )
        call: Any = watch(service_pb2.WatchAlertsRequest())
        await call.initial_metadata()  # subscribed
        arrived: dict[str, asyncio.Future[float]] = {}
        loop = asyncio.get_running_loop()

        def future(pipeline: str) -> asyncio.Future[float]:
            return arrived.setdefault(pipeline, loop.create_future())

        async def read() -> None:
            async for event in call:
                pid = event.alert.pipeline_id
                if event.type == alert_pb2.ALERT_EVENT_TYPE_FIRED and pid.startswith(
                    "alert-probe."
                ):
                    fut = future(pid)
                    if not fut.done():
                        fut.set_result(time.perf_counter())

        reader = asyncio.create_task(read())
        load = asyncio.create_task(_background(target, background, rate)) if background else None
        latencies: list[float] = []
        missed = 0
        began = time.perf_counter()

        async def probe(i: int) -> None:
            nonlocal missed
            fut = future(_probe_pipeline(label, i))
            sent = time.perf_counter()
            await ingest(probes[i], timeout=PROBE_TIMEOUT)
            try:
                latencies.append(await asyncio.wait_for(fut, PROBE_TIMEOUT) - sent)
            except TimeoutError:
                missed += 1

        tasks = []
        for i in range(len(probes)):
            due = began + 1.0 + i / PROBE_RATE  # a second of load first
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(probe(i)))
        await asyncio.gather(*tasks)
        call.cancel()
        reader.cancel()
        load_result = await load if load is not None else None
    return {
        "latencies": latencies,
        "missed": missed,
        "probes": len(probes),
        "seconds": time.perf_counter() - began,
        "background": {k: v for k, v in (load_result or {}).items() if k != "latencies"},
    }


async def _background(target: str, requests: list[bytes], rate: float) -> dict[str, Any]:
    return await asyncio.to_thread(loadgen.paced, target, requests, rate, len(requests) / rate + 5)


# -- in the harness -------------------------------------------------------------------------------


def run(ctx: Context) -> SectionResult:
    """Measure p50/p99 alert latency on an idle server and under background loads."""
    res = SectionResult(NAME, TITLE)
    probes, seconds = _plan(ctx.quick)
    runs: dict[str, Any] = {}
    with ctx.worker() as worker, ctx.pipewarden("alerts-pipewarden") as server:
        labels = [label for label, _ in SCENARIOS]
        setup = worker.call(_setup, server.target, probes, labels, timeout=300)
        for label, rate in SCENARIOS:
            cpu = server.cpu_seconds()
            out = worker.call(_measure, server.target, label, seconds, rate, timeout=seconds + 120)
            server.check_alive()
            out["server_cpu"] = (server.cpu_seconds() - cpu) / out["seconds"]
            stats = out["latency_ms"] = summarize_ms(out.pop("latencies"))
            runs[label] = out
            where = (
                "idle server"
                if not rate
                else f"{rate * LOAD_SIZE:,.0f} events/s of {PIPELINES:,} pipelines"
            )
            ctx.log(
                f"alerts, {where}: p50 {stats['p50']:.2f} ms, p99 {stats['p99']:.2f} ms, "
                f"{out['missed']} missed, server CPU {out['server_cpu']:.0%}"
            )
            note = f"{stats['count']} probes at {PROBE_RATE:g}/s, {out['missed']} missed"
            res.add(f"p50 alert latency, {where}", stats["p50"], "ms", note=note)
            res.add(
                f"p99 alert latency, {where}",
                stats["p99"] if not out["missed"] else float("nan"),
                "ms",
                TARGET if label in TARGETED else None,
                note=f"max {stats['max']:.2f} ms, server CPU {out['server_cpu']:.0%}",
            )
    res.details.update(setup=setup, probe_rate=PROBE_RATE, runs=runs)
    return res
