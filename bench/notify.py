"""Notification latency: from ingesting the run that makes a CRITICAL anomaly to the PagerDuty
request arriving at a local Events API peer, on a server under load; and, as context, the
delivery stage alone.

**The full path.** A Pipewarden server (a subprocess, `fsync: always` for its log and its
notification outbox) has one PagerDuty receiver pointing at the local peer (`bench/pager.py`, a
separate process), with its rate limit raised (PagerDuty's own is 120 a minute) and a route that
pages every CRITICAL alert (of the probes and of the fleet; HIGH and MEDIUM go nowhere);
detection has its defaults. Each probe is the fifth failure in a row of a pipeline that already
had four (set up beforehand, so it has a HIGH alert): its Ingest call makes the
CONSECUTIVE_FAILURES anomaly CRITICAL, detection raises the alert to CRITICAL, its record is
made durable, the alert feed hands the event to the notifiers, the outbox makes the
notification durable, and the worker posts the trigger. The latency of a probe is from just
before its Ingest call (in the client) to the trigger's arrival at the peer; both read
time.monotonic(), one clock for every process of the machine. Meanwhile one StreamIngest stream
ingests realistic runs of a 1,000-pipeline fleet: first at a modest fixed rate (1,000 events/s,
comparable across commits and machines), then at half the rate the same server sustains flat
out (measured first, as the `latency` section does). As a split of the path, a WatchAlerts
stream in the client notes when each probe's CRITICAL event arrives.

**The delivery stage alone.** A dispatcher in the client worker process with the same receiver
and a fresh outbox (`fsync: always`): from `Dispatcher.submit` of a CRITICAL alert event to the
PagerDuty request at the peer, alerts submitted one at a time at a steady pace, then all at once
as a burst.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench import loadgen
from bench.common import (
    HOST,
    STORE,
    Context,
    SectionResult,
    ServerProcess,
    Target,
    free_port,
    percentile,
    summarize_ms,
)
from bench.probes import pipeline as probe_pipeline
from bench.probes import prepare as prepare_probes
from bench.workload import Fleet
from pipewarden.v1 import alert_pb2, service_pb2

__all__ = ["NAME", "TITLE", "run"]

NAME = "notify"
TITLE = "Notifications: the run that makes a CRITICAL anomaly to the PagerDuty request"

TARGET = Target("<", 50.0, "ms")
RATE = 20.0
"""Alerts a second in the delivery stage's paced run."""
WARM_UP = 20
ROUTING_KEY = "b" * 32
SETUP_FAILURES = 4
"""Failures in a row of each probe pipeline before its probe, the fifth (the defaults: HIGH
from 3, CRITICAL from 5)."""
PROBE_RATE = 20.0
"""Probes a second in the full path's run."""
PIPELINES = 1000
LOAD_SIZE = 100
LOAD_FRACTION = 0.5
FIXED_RATE = 10.0
"""Background requests a second of the first run (1,000 events/s): a modest load, comparable
across commits and machines; the second runs at LOAD_FRACTION of the maximum."""
INGEST = "/pipewarden.v1.PipelineMonitor/Ingest"
WATCH = "/pipewarden.v1.PipelineMonitor/WatchAlerts"
PROBE_TIMEOUT = 10.0
RECEIVER = {"name": "oncall", "type": "pagerduty", "routing_key": ROUTING_KEY,
            "rate_per_second": 100_000, "burst": 10_000, "queue_size": 100_000}  # fmt: skip
"""The PagerDuty receiver of both runs (its url added), the rate limit raised out of the way."""


def _plan(quick: bool) -> tuple[int, int]:
    """Probes of the full path; alerts per delivery-stage run (paced, then burst)."""
    return (50, 50) if quick else (200, 200)


def _calibration(quick: bool) -> int:
    """Requests of the flat-out run that finds the maximum rate."""
    return 100 if quick else 500


# -- in the client worker: the full path ----------------------------------------------------------


def _probe_pipeline(label: str, i: int) -> str:
    return probe_pipeline("notify-probe", label, i)


def _setup(target: str, probes: int, labels: list[str], calibration: int) -> dict[str, Any]:
    """Warm the fleet up, give every probe pipeline of each run four failures in a row (their
    fifth is kept in STORE), then find the rate the server sustains flat out."""
    prepare_probes(
        target,
        "notify-probe",
        labels,
        probes,
        SETUP_FAILURES,
        pipelines=PIPELINES,
        load_size=LOAD_SIZE,
    )
    fleet: Fleet = STORE["fleet"]
    batch = fleet.requests(fleet.random_order(calibration * LOAD_SIZE, 7), LOAD_SIZE)
    return loadgen.blast(target, batch, streams=8, max_seconds=30)


def _measure(target: str, label: str, rate: float) -> dict[str, Any]:
    """Send the probes of `label` at PROBE_RATE while the background stream sends `rate`
    requests a second; the monotonic time just before each probe's Ingest, and its FIRED
    event's arrival."""
    probes: list[bytes] = STORE[f"probes-{label}"]
    fleet: Fleet = STORE["fleet"]
    seconds = 2.0 + len(probes) / PROBE_RATE
    count = int(rate * seconds) + 1
    background = fleet.requests(fleet.random_order(count * LOAD_SIZE, 11), LOAD_SIZE)
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(_probe_run(target, label, probes, background, rate))
    finally:
        gc.enable()


async def _probe_run(
    target: str, label: str, probes: list[bytes], background: list[bytes], rate: float
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        ingest: Any = channel.unary_unary(
            INGEST, request_serializer=None, response_deserializer=None
        )
        watch = channel.unary_stream(
            WATCH,
            request_serializer=service_pb2.WatchAlertsRequest.SerializeToString,
            response_deserializer=alert_pb2.AlertEvent.FromString,
        )
        call: Any = watch(service_pb2.WatchAlertsRequest(min_severity=3))
        await call.initial_metadata()  # subscribed
        fired: dict[str, float] = {}

        async def read() -> None:
            async for event in call:
                pid = event.alert.pipeline_id
                if pid.startswith("notify-probe.") and pid not in fired:
                    fired[pid] = time.monotonic()

        reader = asyncio.create_task(read())
        load = asyncio.create_task(
            asyncio.to_thread(loadgen.paced, target, background, rate, len(background) / rate + 5)
        )
        sent: dict[str, float] = {}
        failed = 0

        async def probe(i: int) -> None:
            nonlocal failed
            sent[_probe_pipeline(label, i)] = time.monotonic()
            try:
                await ingest(probes[i], timeout=PROBE_TIMEOUT)
            except grpc.aio.AioRpcError:
                failed += 1

        began = time.monotonic()
        tasks = []
        for i in range(len(probes)):
            due = began + 1.0 + i / PROBE_RATE  # a second of load first
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(probe(i)))
        await asyncio.gather(*tasks)
        # The FIRED events of the last probes.
        deadline = time.monotonic() + PROBE_TIMEOUT
        while time.monotonic() < deadline:
            if len(fired) == len(probes):
                break
            await asyncio.sleep(0.01)
        call.cancel()
        reader.cancel()
        background_result = await load
    background_result.pop("latencies", None)
    return {"sent": sent, "fired": fired, "failed": failed, "background": background_result}


# -- in the client worker -------------------------------------------------------------------------


def _deliver(url: str, data_dir: str, count: int) -> dict[str, Any]:
    return asyncio.run(_deliver_async(url, data_dir, count))


async def _deliver_async(url: str, data_dir: str, count: int) -> dict[str, Any]:
    from pipewarden.notifiers.config import parse_receivers, parse_routes
    from pipewarden.notifiers.dispatcher import Dispatcher
    from pipewarden.notifiers.pagerduty import dedup_key
    from pipewarden.v1 import alert_pb2, anomaly_pb2

    def alert(alert_id: str) -> alert_pb2.AlertEvent:
        a = alert_pb2.Alert(
            alert_id=alert_id,
            fingerprint=f"bench.pipeline/{alert_id}",
            pipeline_id=f"bench.pipeline_{alert_id}",
            team="bench",
            kind=anomaly_pb2.ANOMALY_KIND_CONSECUTIVE_FAILURES,
            severity=anomaly_pb2.SEVERITY_CRITICAL,
            message="5 failures in a row (expected none)",
            state=alert_pb2.ALERT_STATE_FIRING,
            occurrences=1,
            observed=5.0,
        )
        now = time.time()
        a.first_seen.FromNanoseconds(int(now * 1e9))
        a.last_seen.FromNanoseconds(int(now * 1e9))
        e = alert_pb2.AlertEvent(alert=a, type=alert_pb2.ALERT_EVENT_TYPE_FIRED)
        e.time.FromNanoseconds(int(now * 1e9))
        return e

    receivers = parse_receivers([{**RECEIVER, "url": url}])
    routes = parse_routes([{"critical": ["oncall"]}], ["oncall"])
    dispatcher = Dispatcher(receivers, routes, data_dir=data_dir, fsync="always")
    await dispatcher.start()
    try:
        for i in range(WARM_UP):  # the connection, the first fsyncs, the code paths
            dispatcher.submit(alert(f"warm-{i}"))
            await dispatcher.drain(10)
        paced: dict[str, float] = {}
        submit_cost: list[float] = []
        began = time.monotonic()
        for i in range(count):
            delay = began + i / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event = alert(f"paced-{i}")
            t0 = time.monotonic()
            dispatcher.submit(event)
            t1 = time.monotonic()
            paced[dedup_key(event.alert)] = t0
            submit_cost.append(t1 - t0)
        if not await dispatcher.drain(60):
            raise RuntimeError("the paced alerts were not all delivered within 60 s")
        burst: dict[str, float] = {}
        events = [alert(f"burst-{i}") for i in range(count)]
        burst_began = time.monotonic()
        for event in events:
            burst[dedup_key(event.alert)] = time.monotonic()
            dispatcher.submit(event)
        if not await dispatcher.drain(60):
            raise RuntimeError("the burst was not all delivered within 60 s")
    finally:
        await dispatcher.close()
    return {
        "paced": paced,
        "burst": burst,
        "burst_began": burst_began,
        "submit_seconds": submit_cost,
    }


# -- in the harness -------------------------------------------------------------------------------


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: bytes = response.read()
        return data


def _wait_ready(pager: ServerProcess, base: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        pager.check_alive()
        try:
            _get(f"{base}/ready", timeout=1.0)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pager peer did not start: {pager.log_tail()}") from None
            time.sleep(0.05)


def _latencies(submitted: dict[str, float], arrivals: dict[str, list[float]]) -> list[float]:
    missing = [k for k in submitted if k not in arrivals]
    if missing:
        raise RuntimeError(f"{len(missing)} pages never arrived, such as {missing[0]}")
    return [arrivals[k][0] - t for k, t in submitted.items()]


@contextmanager
def _pager(ctx: Context) -> Iterator[str]:
    """The local PagerDuty peer, running until the block ends; yields its base URL."""
    port = free_port()
    base = f"http://{HOST}:{port}"
    argv = [sys.executable, "-m", "bench.pager", "--port", str(port)]
    pager = ServerProcess("notify-pager", argv, port, ctx.logdir / "notify-pager.log")
    try:
        _wait_ready(pager, base)
        yield base
        pager.check_alive()
    finally:
        pager.stop()


def _triggers(base: str, pipelines: list[str], within: float) -> dict[str, list[float]]:
    """The peer's trigger arrivals by pipeline, once every one of `pipelines` has one (or
    `within` seconds have passed)."""
    deadline = time.monotonic() + within
    while True:
        triggers: dict[str, list[float]] = json.loads(_get(f"{base}/triggers"))
        if all(p in triggers for p in pipelines) or time.monotonic() > deadline:
            return triggers
        time.sleep(0.05)


def _trigger_count(base: str) -> int:
    """Trigger events the peer has received so far."""
    triggers: dict[str, list[float]] = json.loads(_get(f"{base}/triggers"))
    return sum(len(arrivals) for arrivals in triggers.values())


def run(ctx: Context) -> SectionResult:
    """Measure p50/p99 of the full path under half the maximum load, then of the delivery
    stage alone (paced and in a burst)."""
    res = SectionResult(NAME, TITLE)
    probes, count = _plan(ctx.quick)
    with _pager(ctx) as base:
        _full_path(ctx, res, base, probes)
        _delivery_stage(ctx, res, base, count)
    return res


def _full_path(ctx: Context, res: SectionResult, base: str, probes: int) -> None:
    config = {
        "receivers": [{**RECEIVER, "url": f"{base}/v2/enqueue"}],
        "routes": [{"critical": ["oncall"]}],
    }
    runs: dict[str, Any] = {}
    labels = ["fixed", "half-max"]
    with ctx.worker() as worker, ctx.pipewarden("notify-pipewarden", config) as server:
        cal = worker.call(
            _setup, server.target, probes, labels, _calibration(ctx.quick), timeout=300
        )
        max_rate = cal["requests"] / cal["seconds"]
        ctx.log(
            f"notify: flat out {max_rate:,.0f} requests/s ({max_rate * LOAD_SIZE:,.0f} events/s)"
        )
        for label, rate in zip(labels, (FIXED_RATE, LOAD_FRACTION * max_rate), strict=True):
            cpu = server.cpu_seconds()
            before = _trigger_count(base)
            began = time.monotonic()
            out = worker.call(
                _measure, server.target, label, rate, timeout=probes / PROBE_RATE + 120
            )
            out["triggers"] = _triggers(base, list(out["sent"]), within=PROBE_TIMEOUT)
            out["server_cpu"] = (server.cpu_seconds() - cpu) / (time.monotonic() - began)
            out["other_pages"] = _trigger_count(base) - before - len(out["sent"])
            server.check_alive()
            runs[label] = _full_path_figures(ctx, res, label, out)
    res.details["full_path"] = {
        "probes": probes,
        "probe_rate": PROBE_RATE,
        "pipelines": PIPELINES,
        "calibration": cal,
        "max_requests_per_second": max_rate,
        "runs": runs,
    }


def _full_path_figures(
    ctx: Context, res: SectionResult, label: str, out: dict[str, Any]
) -> dict[str, Any]:
    background = out["background"]
    if background["rejected"] or background["duplicates"]:
        raise RuntimeError(f"not every background event was accepted: {background}")
    sent, fired, triggers = out["sent"], out["fired"], out["triggers"]
    pipelines = list(sent)
    missed = [p for p in pipelines if p not in triggers]
    paged = [p for p in pipelines if p in triggers]
    full = summarize_ms([triggers[p][0] - sent[p] for p in paged])
    to_event = summarize_ms([fired[p] - sent[p] for p in pipelines if p in fired])
    notifying = summarize_ms([triggers[p][0] - fired[p] for p in paged if p in fired])
    load = background["events"] / background["seconds"]
    where = f"{load:,.0f} events/s" + (" (half max)" if label == "half-max" else "")
    ctx.log(
        f"notify, full path under {where}: p50 {full['p50']:.2f} ms, p99 {full['p99']:.2f} ms, "
        f"{len(missed)} missed; of which to the WatchAlerts event p50 {to_event['p50']:.2f} ms, "
        f"p99 {to_event['p99']:.2f} ms; server CPU {out['server_cpu']:.0%}; "
        f"{out['other_pages']} pages of the fleet's own alerts meanwhile"
    )
    res.add(
        f"p50 run that makes a CRITICAL anomaly → PagerDuty request, under {where}",
        full["p50"],
        "ms",
        note=f"{full['count']} probes at {PROBE_RATE:g}/s, {len(missed)} missed, "
        f"{out['failed']} Ingest errors; log and outbox fsync always",
    )
    res.add(
        f"p99 run that makes a CRITICAL anomaly → PagerDuty request, under {where}",
        full["p99"] if not missed else float("nan"),
        "ms",
        TARGET if label == "half-max" else None,
        note=f"max {full['max']:.2f} ms, server CPU {out['server_cpu']:.0%}",
    )
    res.add(
        "  p99 of it: ingest → its WatchAlerts event (detection, the alert's record durable)",
        to_event["p99"],
        "ms",
        note=f"p50 {to_event['p50']:.2f} ms",
    )
    res.add(
        "  p99 of it: WatchAlerts event → PagerDuty request (feed, outbox, the POST)",
        notifying["p99"],
        "ms",
        note=f"p50 {notifying['p50']:.2f} ms, per probe",
    )
    return {
        "rate": background["events"] / background["seconds"],
        "latency_ms": full,
        "to_watch_event_ms": to_event,
        "watch_event_to_page_ms": notifying,
        "missed": len(missed),
        "other_pages": out["other_pages"],
        "repeated_triggers": sum(len(triggers[p]) - 1 for p in paged),
        "ingest_errors": out["failed"],
        "server_cpu": out["server_cpu"],
        "background": background,
    }


def _delivery_stage(ctx: Context, res: SectionResult, base: str, count: int) -> None:
    with ctx.worker() as worker:
        out = worker.call(
            _deliver, f"{base}/v2/enqueue", str(Path(ctx.workdir) / "data"), count,
            timeout=count / RATE + 180,
        )  # fmt: skip
    arrivals: dict[str, list[float]] = json.loads(_get(f"{base}/arrivals"))
    paced = summarize_ms(_latencies(out["paced"], arrivals))
    burst = summarize_ms(_latencies(out["burst"], arrivals))
    last = max(arrivals[k][0] for k in out["burst"]) - out["burst_began"]
    mine = [*out["paced"], *out["burst"]]
    repeats = sum(len(arrivals[k]) - 1 for k in mine)
    cost_us = [s * 1e6 for s in out["submit_seconds"]]
    ctx.log(
        f"notify, delivery stage: paced p50 {paced['p50']:.2f} ms, p99 {paced['p99']:.2f} ms; "
        f"burst of {count} p99 {burst['p99']:.2f} ms, all in {last * 1000:.0f} ms; "
        f"submit {percentile(cost_us, 50):.0f} µs"
    )
    res.add(
        f"p50 submit → PagerDuty request, {count} CRITICAL alerts at {RATE:g}/s",
        paced["p50"],
        "ms",
        note="the delivery stage alone, as context; outbox fsync always",
    )
    res.add(
        f"p99 submit → PagerDuty request, {count} CRITICAL alerts at {RATE:g}/s",
        paced["p99"],
        "ms",
        note=f"max {paced['max']:.2f} ms",
    )
    res.add(
        f"p99 submit → PagerDuty request, {count} submitted at once",
        burst["p99"],
        "ms",
        note=f"p50 {burst['p50']:.2f} ms; the last arrived {last * 1000:.0f} ms after the first "
        "submit (one worker, in order)",
    )
    res.add(
        "Dispatcher.submit() call, median",
        percentile(cost_us, 50),
        "µs",
        note=f"p99 {percentile(cost_us, 99):.0f} µs: route, dedup, outbox append, enqueue",
    )
    res.details["delivery_stage"] = {
        "alerts": count,
        "rate": RATE,
        "paced_ms": paced,
        "burst_ms": burst,
        "burst_all_delivered_ms": last * 1000,
        "repeated_requests": repeats,
        "submit_us": {"p50": percentile(cost_us, 50), "p99": percentile(cost_us, 99)},
    }
