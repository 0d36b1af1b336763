"""StreamIngest answer latency at a moderate, steady rate.

One stream, like one pipeline runner, sends requests of 100 executions on a fixed schedule,
without waiting for answers: first at a fixed modest rate (comparable across commits and
machines), then at half the rate the server sustains flat out (measured first, on the same
server). The latency of a request is the time from just before its write to the
arrival of its answer, measured in the client; an answer is sent once its request is durable,
so it includes the write-ahead log's sync.
"""

from __future__ import annotations

from typing import Any

from bench import loadgen
from bench.common import STORE, Context, SectionResult, summarize_ms
from bench.workload import Fleet

__all__ = ["NAME", "TITLE", "run"]

NAME = "latency"
TITLE = "StreamIngest answer latency, 100 exec/request, one stream"

SIZE = 100
PIPELINES = 1000
LOAD_FRACTION = 0.5
FIXED_RATE = 200.0
"""Requests per second of the fixed-rate run (20,000 events/s): comparable across commits."""


def _plan(quick: bool) -> tuple[int, float, int]:
    """Requests of the calibration run; seconds and most requests of the paced run (whichever
    ends it first)."""
    return (100, 2.0, 400) if quick else (500, 6.0, 4000)


# -- in the client worker -------------------------------------------------------------------------


def _calibrate(target: str, requests: int) -> dict[str, Any]:
    fleet = STORE["fleet"] = Fleet(PIPELINES)
    # Every pipeline once first, so that creating pipelines is not part of the calibration.
    warm = fleet.requests(range(PIPELINES), SIZE)
    loadgen.blast(target, warm, streams=4, max_seconds=30)
    batch = fleet.requests(fleet.random_order(requests * SIZE, 7), SIZE)
    return loadgen.blast(target, batch, streams=8, max_seconds=30)


def _paced(target: str, rate: float, seconds: float, most: int) -> dict[str, Any]:
    fleet: Fleet = STORE["fleet"]
    count = min(most, int(rate * seconds) + 1)
    requests = fleet.requests(fleet.random_order(count * SIZE, 8), SIZE)
    return loadgen.paced(target, requests, rate, seconds + 5.0)


# -- in the harness -------------------------------------------------------------------------------


def run(ctx: Context) -> SectionResult:
    """Measure p50/p99 answer latency at a fixed modest rate and at half the maximum rate."""
    res = SectionResult(NAME, TITLE)
    calibration_requests, seconds, most = _plan(ctx.quick)
    runs: dict[str, Any] = {}
    with ctx.worker() as worker, ctx.pipewarden("latency-pipewarden") as server:
        cal = worker.call(_calibrate, server.target, calibration_requests)
        max_rate = cal["requests"] / cal["seconds"]
        ctx.log(f"latency: flat out {max_rate:,.0f} requests/s ({max_rate * SIZE:,.0f} events/s)")
        for label, rate in (
            (f"{FIXED_RATE:g} req/s", FIXED_RATE),
            (f"half max, {LOAD_FRACTION * max_rate:,.0f} req/s", LOAD_FRACTION * max_rate),
        ):
            cpu = server.cpu_seconds()
            out = worker.call(_paced, server.target, rate, seconds, most, timeout=seconds + 120)
            server.check_alive()
            if out["rejected"] or out["duplicates"]:
                raise RuntimeError(f"not every event was accepted: {out}")
            out["server_cpu"] = (server.cpu_seconds() - cpu) / out["seconds"]
            out["rate"] = rate
            stats = out["latency_ms"] = summarize_ms(out.pop("latencies"))
            runs[label] = out
            ctx.log(
                f"latency at {label}: p50 {stats['p50']:.2f} ms, p99 {stats['p99']:.2f} ms, "
                f"server CPU {out['server_cpu']:.0%}"
            )
            context = (
                f"{stats['count']:,} requests, {out['events'] / out['seconds']:,.0f} events/s, "
                f"server CPU {out['server_cpu']:.0%}"
            )
            res.add(f"p50 answer latency at {label}", stats["p50"], "ms", note=context)
            res.add(
                f"p99 answer latency at {label}",
                stats["p99"],
                "ms",
                note=f"p90 {stats['p90']:.2f} ms, max {stats['max']:.2f} ms",
            )
    res.details.update(
        executions_per_request=SIZE,
        calibration=cal,
        max_requests_per_second=max_rate,
        runs=runs,
    )
    return res
