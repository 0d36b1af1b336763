"""Ingest throughput: Pipewarden's full path against the no-op sink, side by side.

Three servers: the no-op sink; Pipewarden with anomaly detection off (the ingest path: decode,
validate, deduplicate, apply, log, fsync, answer); and Pipewarden as it ships, detectors on. For
each request size, every round builds one set of distinct requests and sends the same bytes to
each server, one after the other (the order rotates between rounds, so a drift in the machine's
speed hurts no side more). The figures to watch are ratios taken round by round, then the
median: ingest path / sink (target 0.5) and detectors on / off (target 0.8: detection may cost
at most a fifth of the throughput). The absolute rates are context.

At 1,000 executions a request, every round also sends a second set of requests to Pipewarden
as users install it, a wheel of the current tree (built with pip, so with the hot path compiled
by mypyc where a C compiler is) in its own virtual environment under bench/out/wheel/, detection
off, and to a development tree's server that has seen the same requests since it started, the
two back to back in alternating order, after every server has gone quiet (the detecting server
goes on evaluating after its run). The figure
is the ratio installed wheel / development tree, round by round, then the median (target 1.0:
what users install runs no slower than a `make`-built checkout).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import Any

from bench import loadgen, wheel
from bench.common import STORE, Context, SectionResult, ServerProcess, Target, Worker
from bench.profile import summarize
from bench.workload import Fleet, check_request

__all__ = ["NAME", "TITLE", "build", "hot_path", "measure", "run", "send", "setup"]

NAME = "ingest"
TITLE = "Ingest throughput (StreamIngest), Pipewarden vs no-op sink"

SIZES = (1, 100, 1000)
"""Executions per request."""
PIPELINES = 1000
STREAMS = 8
"""Concurrent streams of the load client; enough to keep either server saturated."""
RATIO_TARGET = Target(">=", 0.5)
DETECTION_TARGET = Target(">=", 0.8)
NO_DETECTION = {"detection": {"enabled": False}}
LABELS = ("sink", "pipewarden", "detecting")
"""The sink, Pipewarden with detection off, Pipewarden with detection on."""
WHEEL_SIZE = 1000
"""The request size at which the installed wheel runs beside the development tree."""
WHEEL_TARGET = Target(">=", 1.0)
QUIET_CPU = 0.05
"""A server counts as quiet below this share of a CPU."""
QUIET_WITHIN = 15.0
"""How long to wait at most for the servers to go quiet before the wheel's pair of runs."""
PROFILE_SECONDS = 8.0
"""How long the extra run under py-spy (--profile) should take."""


def _plan(quick: bool) -> tuple[dict[int, int], int, float]:
    """Events per run for each size, rounds, and the time limit of one run."""
    if quick:
        return {1: 2_000, 100: 20_000, 1000: 40_000}, 1, 5.0
    return {1: 15_000, 100: 200_000, 1000: 300_000}, 7, 15.0


# -- in the client worker (also used by the fsync section) ----------------------------------------


def setup(pipelines: int) -> dict[str, Any]:
    """Make the fleet and the warmup requests (every pipeline twice) in the worker."""
    fleet = STORE["fleet"] = Fleet(pipelines)
    # Every pipeline twice, so that pipeline creation is not part of any measured run.
    warmup = fleet.requests([p for _ in range(2) for p in range(pipelines)], 100)
    STORE["warmup"] = warmup
    check_request(warmup[0], fleet)
    return {"warmup_requests": len(warmup), "teams": len(fleet.teams)}


def build(size: int, events: int, seed: int) -> dict[str, Any]:
    """Build fresh requests of `size` executions, `events` in all, as STORE["requests"]."""
    fleet: Fleet = STORE["fleet"]
    requests = STORE["requests"] = fleet.requests(fleet.random_order(events, seed), size)
    check_request(requests[-1], fleet)
    return {"requests": len(requests), "bytes": sum(len(r) for r in requests)}


def send(target: str, key: str, max_seconds: float) -> dict[str, Any]:
    """Blast STORE[key] at `target` over STREAMS streams."""
    return loadgen.blast(target, STORE[key], streams=STREAMS, max_seconds=max_seconds)


# -- in the harness -------------------------------------------------------------------------------


def measure(worker: Worker, server: ServerProcess, key: str, max_seconds: float) -> dict[str, Any]:
    """Send STORE[key] to `server` once: events/s and the server's CPU share, checking that
    every event was accepted."""
    cpu = server.cpu_seconds()
    result: dict[str, Any] = worker.call(
        send, server.target, key, max_seconds, timeout=max_seconds + 60
    )
    server.check_alive()
    result["server_cpu"] = (server.cpu_seconds() - cpu) / result["seconds"]
    result["events_per_second"] = result["events"] / result["seconds"]
    if result["rejected"] or result["duplicates"]:
        raise RuntimeError(
            f"{server.name} did not accept every event: {result['duplicates']} duplicates, "
            f"{result['rejected']} rejected (first: {result.get('first_rejection')})"
        )
    return result


def run(ctx: Context) -> SectionResult:
    """Measure events/s of both servers for each request size."""
    res = SectionResult(NAME, TITLE)
    events, rounds, max_seconds = _plan(ctx.quick)
    res.details.update(
        streams=STREAMS, pipelines=PIPELINES, rounds=rounds, events_per_run=events, sizes={}
    )
    ctx.log(f"a wheel of the current tree, installed into {ctx.logdir / 'wheel'}")
    wheel_bin = wheel.installed(ctx.logdir / "wheel")
    with (
        ctx.worker() as worker,
        ctx.sink("ingest-sink") as sink,
        ctx.pipewarden("ingest-pipewarden", NO_DETECTION) as full,
        ctx.pipewarden("ingest-detecting") as detecting,
        ctx.pipewarden("ingest-dev", NO_DETECTION) as dev,
        ctx.pipewarden("ingest-wheel", NO_DETECTION, bin_dir=wheel_bin) as installed,
    ):
        hot_paths = {"development tree": hot_path(dev), "installed wheel": hot_path(installed)}
        res.details["hot_path"] = hot_paths
        ctx.log(f"hot path: {hot_paths}")
        worker.call(setup, PIPELINES)
        servers = {
            "sink": sink,
            "pipewarden": full,
            "detecting": detecting,
            "dev": dev,
            "wheel": installed,
        }
        for server in servers.values():
            measure(worker, server, "warmup", max_seconds)
        for size in SIZES:
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in LABELS}
            ratios: list[float] = []
            detection_ratios: list[float] = []
            wheel_ratios: list[float] = []
            for r in range(rounds):
                built = worker.call(build, size, events[size], size * 1000 + r)
                order = [(label, servers[label]) for label in LABELS]
                order = order[r % 3 :] + order[: r % 3]
                rates = {}
                for label, server in order:
                    out = measure(worker, server, "requests", max_seconds)
                    out.update(built_requests=built["requests"], request_bytes=built["bytes"])
                    runs[label].append(out)
                    rates[label] = out["events_per_second"]
                ratios.append(rates["pipewarden"] / rates["sink"])
                detection_ratios.append(rates["detecting"] / rates["pipewarden"])
                installed_rate = ""
                if size == WHEEL_SIZE:
                    pair = [("dev", dev), ("wheel", installed)][:: 1 if r % 2 == 0 else -1]
                    worker.call(build, size, events[size], size * 1000 + 500 + r)
                    quiet = _quiet(servers.values())
                    for label, server in pair:
                        out = measure(worker, server, "requests", max_seconds)
                        out.update(quiet_after_seconds=quiet)
                        runs.setdefault(label, []).append(out)
                        rates[label] = out["events_per_second"]
                    wheel_ratios.append(rates["wheel"] / rates["dev"])
                    installed_rate = (
                        f"; then dev {rates['dev']:,.0f}/s, installed wheel "
                        f"{rates['wheel']:,.0f}/s (wheel/dev {wheel_ratios[-1]:.2f})"
                    )
                ctx.log(
                    f"ingest x{size} round {r + 1}/{rounds}: sink {rates['sink']:,.0f}/s, "
                    f"pipewarden {rates['pipewarden']:,.0f}/s (ratio {ratios[-1]:.2f}), "
                    f"with detection {rates['detecting']:,.0f}/s "
                    f"(on/off {detection_ratios[-1]:.2f}){installed_rate}"
                )
            _report(res, size, runs, ratios, detection_ratios)
            if wheel_ratios:
                _report_wheel(res, size, runs, wheel_ratios, hot_paths)
            if ctx.profile:
                for label in ("pipewarden", "detecting"):
                    _profile(
                        ctx, res, worker, servers[label], label, size, events[size], max_seconds
                    )
        res.details["pipewarden_data_dir_bytes"] = ctx.data_dir_bytes("ingest-pipewarden")
    return res


def _quiet(servers: Iterable[ServerProcess]) -> float:
    """Wait until every server uses less than QUIET_CPU of a CPU (or QUIET_WITHIN seconds have
    passed); return the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < QUIET_WITHIN:
        before = [(server, server.cpu_seconds()) for server in servers]
        time.sleep(0.25)
        if all(server.cpu_seconds() - cpu < QUIET_CPU * 0.25 for server, cpu in before):
            break
    return time.monotonic() - began


def hot_path(server: ServerProcess) -> str:
    """What the server's start line says runs its hot path ("compiled with mypyc", ...)."""
    for line in server.log_tail(200).splitlines():
        if "serving gRPC on" in line and "hot path " in line:
            return line.split("hot path ", 1)[1].strip()
    return "unknown (no start line)"


def _report_wheel(
    res: SectionResult,
    size: int,
    runs: dict[str, list[dict[str, Any]]],
    wheel_ratios: list[float],
    hot_paths: dict[str, str],
) -> None:
    summary = res.details["sizes"][str(size)]
    summary["wheel_ratios"] = wheel_ratios
    names = {"dev": "development tree", "wheel": "installed wheel"}
    for label in ("dev", "wheel"):
        rates = [r["events_per_second"] for r in runs[label]]
        cpu = statistics.median(r["server_cpu"] for r in runs[label])
        summary[label] = {"median": statistics.median(rates), "best": max(rates), "cpu": cpu}
        res.add(
            f"{names[label]} (detection off) events/s, {size:,} exec/request, paired",
            statistics.median(rates),
            "events/s",
            note=f"median of {len(rates)}; best {max(rates):,.0f}; server CPU {cpu:.0%}; "
            f"hot path {hot_paths[names[label]]}",
        )
    res.add(
        f"ratio installed wheel/development tree, {size:,} exec/request",
        statistics.median(wheel_ratios),
        "ratio",
        WHEEL_TARGET,
        note=f"median of paired rounds {', '.join(f'{x:.2f}' for x in wheel_ratios)}",
    )


def _report(
    res: SectionResult,
    size: int,
    runs: dict[str, list[dict[str, Any]]],
    ratios: list[float],
    detection_ratios: list[float],
) -> None:
    summary: dict[str, Any] = {"ratios": ratios, "detection_ratios": detection_ratios, "runs": runs}
    names = {
        "sink": "sink",
        "pipewarden": "pipewarden (detection off)",
        "detecting": "pipewarden (detection on)",
    }
    for label in LABELS:
        rates = [r["events_per_second"] for r in runs[label]]
        cpu = statistics.median(r["server_cpu"] for r in runs[label])
        summary[label] = {"median": statistics.median(rates), "best": max(rates), "cpu": cpu}
        res.add(
            f"{names[label]} events/s, {size:,} exec/request",
            statistics.median(rates),
            "events/s",
            note=f"median of {len(rates)}; best {max(rates):,.0f}; server CPU {cpu:.0%}",
        )
    best_ratio = summary["pipewarden"]["best"] / summary["sink"]["best"]
    summary["ratio_median"] = statistics.median(ratios)
    summary["ratio_of_best"] = best_ratio
    res.add(
        f"ratio pipewarden/sink, {size:,} exec/request",
        statistics.median(ratios),
        "ratio",
        RATIO_TARGET,
        note=f"median of paired rounds {', '.join(f'{x:.2f}' for x in ratios)}; "
        f"best/best {best_ratio:.2f}",
    )
    res.add(
        f"ratio detection on/off, {size:,} exec/request",
        statistics.median(detection_ratios),
        "ratio",
        DETECTION_TARGET,
        note=f"median of paired rounds {', '.join(f'{x:.2f}' for x in detection_ratios)}",
    )
    res.details["sizes"][str(size)] = summary


def _profile(
    ctx: Context,
    res: SectionResult,
    worker: Worker,
    server: ServerProcess,
    label: str,
    size: int,
    events: int,
    max_seconds: float,
) -> None:
    """One more, unmeasured run of `server` (detection off or on, by `label`) under py-spy,
    long enough for a few thousand samples; keep the hottest functions."""
    rate = res.details["sizes"][str(size)][label]["median"]
    events = max(events, int(rate * PROFILE_SECONDS) // size * size)
    worker.call(build, size, events, size * 1000 + 999)
    out = ctx.logdir / f"ingest-profile-{label}-{size}.txt"
    with server.profiled(out):
        measure(worker, server, "requests", max(max_seconds, 2 * PROFILE_SECONDS))
    top = summarize(out)
    res.details["sizes"][str(size)].setdefault("profiles", {})[label] = {
        "file": str(out),
        "top": top,
    }
    ctx.log(f"ingest x{size} profile of {label} in {out}")
    for row in top[:12]:
        ctx.log(f"  {row['self']:6.1%} self {row['total']:6.1%} total  {row['function']}")
