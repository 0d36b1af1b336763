"""Notification delivery latency: from `Dispatcher.submit` of a CRITICAL alert event to the
PagerDuty request arriving at a local Events API peer.

The dispatcher runs in the client worker process with a PagerDuty receiver whose rate limit is
raised out of the way (PagerDuty's own is 120 a minute), its outbox on disk with `fsync: always`
(so the time includes writing the notification durably before the attempt). The peer
(`bench/pager.py`) is a separate process that notes when each event arrives; both read
time.monotonic(), one clock for the whole machine. Alerts are submitted one at a time at a
steady pace, then all at once as a burst.

This is the delivery stage only. The issue's full path starts earlier, at the ingestion of the
execution that makes the anomaly, through detection and the alert manager; those stages join the
measurement once the alert manager (issue 5) feeds the dispatcher.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    Context,
    SectionResult,
    ServerProcess,
    Target,
    free_port,
    percentile,
    summarize_ms,
)

__all__ = ["NAME", "TITLE", "run"]

NAME = "notify"
TITLE = "Notification delivery: submit of a CRITICAL alert to the PagerDuty request"

RATE = 20.0
"""Alerts a second in the paced run."""
WARM_UP = 20
ROUTING_KEY = "b" * 32


def _plan(quick: bool) -> int:
    """Alerts per run (paced, then burst)."""
    return 50 if quick else 200


# -- in the client worker -------------------------------------------------------------------------


def _deliver(url: str, data_dir: str, count: int) -> dict[str, Any]:
    return asyncio.run(_deliver_async(url, data_dir, count))


async def _deliver_async(url: str, data_dir: str, count: int) -> dict[str, Any]:
    from notifiers.config import parse_receivers, parse_routes
    from notifiers.dispatcher import Dispatcher
    from notifiers.pagerduty import dedup_key
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

    receivers = parse_receivers(
        [
            {
                "name": "oncall",
                "type": "pagerduty",
                "url": url,
                "routing_key": ROUTING_KEY,
                "rate_per_second": 100_000,
                "burst": 10_000,
                "queue_size": 100_000,
            }
        ]
    )
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


def run(ctx: Context) -> SectionResult:
    """Measure p50/p99 submit-to-request latency, paced and in a burst."""
    res = SectionResult(NAME, TITLE)
    count = _plan(ctx.quick)
    port = free_port()
    base = f"http://{HOST}:{port}"
    argv = [sys.executable, "-m", "bench.pager", "--port", str(port)]
    pager = ServerProcess("notify-pager", argv, port, ctx.logdir / "notify-pager.log")
    try:
        _wait_ready(pager, base)
        with ctx.worker() as worker:
            out = worker.call(
                _deliver, f"{base}/v2/enqueue", str(Path(ctx.workdir) / "data"), count,
                timeout=count / RATE + 180,
            )  # fmt: skip
        arrivals: dict[str, list[float]] = json.loads(_get(f"{base}/arrivals"))
        pager.check_alive()
    finally:
        pager.stop()
    paced = summarize_ms(_latencies(out["paced"], arrivals))
    burst = summarize_ms(_latencies(out["burst"], arrivals))
    last = max(arrivals[k][0] for k in out["burst"]) - out["burst_began"]
    repeats = sum(len(v) - 1 for v in arrivals.values())
    cost_us = [s * 1e6 for s in out["submit_seconds"]]
    ctx.log(
        f"notify: paced p50 {paced['p50']:.2f} ms, p99 {paced['p99']:.2f} ms; burst of {count} "
        f"p99 {burst['p99']:.2f} ms, all in {last * 1000:.0f} ms; "
        f"submit {percentile(cost_us, 50):.0f} µs"
    )
    stage = "delivery stage only (ingest and detection join after issue 5)"
    res.add(
        f"p50 submit → PagerDuty request, {count} CRITICAL alerts at {RATE:g}/s",
        paced["p50"],
        "ms",
        note=f"{stage}; outbox fsync always",
    )
    res.add(
        f"p99 submit → PagerDuty request, {count} CRITICAL alerts at {RATE:g}/s",
        paced["p99"],
        "ms",
        Target("<", 50.0, "ms"),
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
    res.details.update(
        alerts=count,
        rate=RATE,
        paced_ms=paced,
        burst_ms=burst,
        burst_all_delivered_ms=last * 1000,
        repeated_requests=repeats,
        submit_us={"p50": percentile(cost_us, 50), "p99": percentile(cost_us, 99)},
    )
    return res
