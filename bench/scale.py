"""Costs that grow with the fleet: new pipelines, memory, a clean stop and a restart.

For each fleet size, a fresh Pipewarden with its default configuration gets one execution for
each of N new pipelines over 100 teams (requests of 1,000, in a shuffled order, as pipelines
appear in a real fleet rather than sorted by id), on 4 streams. Measured:

- ingest of new pipelines: events per second over the whole load, and over its last tenth
  (the rate at a fleet of about N, which is what a growing index makes fall);
- RSS per pipeline: the growth of VmRSS over N (an upper bound: it includes freed memory the
  allocator keeps, and the pipeline's remembered execution id);
- SIGTERM: from the signal to the process's exit (a clean stop: drain, final snapshot, flush);
- restart to SERVING: from starting the process on the same data directory until its health
  check answers SERVING, checked against the server's own account of what it recovered.

`make bench` runs the 10,000 and 100,000 points (section `scale`); `make bench-scale` runs the
1,000,000 point too (section `scale-1m`, minutes).
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from typing import Any

from bench import loadgen
from bench.common import STORE, Context, SectionResult, ServerProcess, Target
from bench.workload import Fleet

__all__ = ["NAME", "TITLE", "run", "run_sizes"]

NAME = "scale"
TITLE = "Fleet size: new pipelines, stop and restart"

TEAMS = 100
BATCH = 1000
STREAMS = 4
SIZES = (10_000, 100_000)
QUICK_SIZES = (10_000,)
SEND_SECONDS = 900.0
STOP_SECONDS = 300.0
"""The longest a stop may take here (a deployment gives 30 s: see the targets)."""
START_SECONDS = 300.0
SIGTERM_TARGET = Target("<", 5.0, "s")
RESTART_TARGET = Target("<", 5.0, "s")
RATIO_TARGET = Target(">=", 0.8)
_RECOVERED = re.compile(r"recovered in (?P<seconds>[\d.]+)s: (?P<pipelines>\d+) pipelines")


# -- in the client worker -------------------------------------------------------------------------


def _prepare(pipelines: int) -> int:
    """The load: one execution for each of `pipelines` new pipelines, in a shuffled order, cut
    into ten parts (the last one's rate is the rate at a fleet of about `pipelines`)."""
    fleet = Fleet(pipelines, prefix="s", teams=TEAMS)
    order = list(range(pipelines))
    random.Random(7).shuffle(order)
    tenth = max(1, pipelines // 10)
    parts = [order[i : i + tenth] for i in range(0, pipelines, tenth)]
    STORE["parts"] = [fleet.requests(part, BATCH) for part in parts]
    return len(parts)


def _send_all() -> dict[str, Any]:
    """Send every part; the counts summed, and each part's seconds and events."""
    total: dict[str, Any] = {"accepted": 0, "events": 0, "seconds": 0.0, "parts": []}
    for requests in STORE.pop("parts"):
        out = loadgen.blast(STORE["target"], requests, STREAMS, 600.0)
        total["accepted"] += out["accepted"]
        total["events"] += out["events"]
        total["seconds"] += out["seconds"]
        total["parts"].append((out["events"], out["seconds"]))
    return total


def _aim(target: str) -> None:
    STORE["target"] = target


# -- in the harness -------------------------------------------------------------------------------


def _settled_rss(server: ServerProcess) -> int:
    time.sleep(1.0)
    first = server.rss_bytes()
    time.sleep(0.5)
    return min(first, server.rss_bytes())


def _sigterm(server: ServerProcess) -> tuple[float, int]:
    """SIGTERM; the seconds until the process exited, and its exit status."""
    began = time.perf_counter()
    server.proc.send_signal(signal.SIGTERM)
    try:
        status = server.proc.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        raise RuntimeError(f"{server.name} did not stop within {STOP_SECONDS:g}s") from None
    seconds = time.perf_counter() - began
    server.stop()  # closes its log
    return seconds, status


def _point(ctx: Context, pipelines: int) -> dict[str, Any]:
    name = f"scale-{pipelines}"
    data_dir = ctx.workdir / f"{name}-data"
    data_dir.mkdir(parents=True)
    with ctx.worker() as worker:
        worker.call(_prepare, pipelines, timeout=600)
        server = ctx.start_pipewarden(name, data_dir)
        try:
            server.wait_serving(START_SECONDS)
            before = _settled_rss(server)
            worker.call(_aim, server.target)
            sent = worker.call(_send_all, timeout=SEND_SECONDS + 60)
            server.check_alive()
            if sent["accepted"] != pipelines:
                raise RuntimeError(f"{name}: {sent['accepted']} of {pipelines} accepted")
            after = _settled_rss(server)
            stop_seconds, status = _sigterm(server)
            if status != 0:
                raise RuntimeError(f"{name}: exit status {status}; log:\n{server.log_tail()}")
        finally:
            server.kill()
    again = ctx.start_pipewarden(f"{name}-restart", data_dir)
    try:
        restart_seconds = again.wait_serving(START_SECONDS)
    finally:
        again.kill()
    m = _RECOVERED.search(again.log_path.read_text(errors="replace"))
    if m is None or int(m["pipelines"]) != pipelines:
        raise RuntimeError(f"{name}: the restart did not recover {pipelines} pipelines")
    last_events, last_seconds = sent["parts"][-1]
    out = {
        "pipelines": pipelines,
        "events_per_second": sent["events"] / sent["seconds"],
        "last_tenth_events_per_second": last_events / last_seconds,
        "rss_bytes_per_pipeline": (after - before) / pipelines,
        "rss_bytes": {"before": before, "after": after},
        "sigterm_seconds": stop_seconds,
        "restart_seconds": restart_seconds,
        "recovery_seconds_logged": float(m["seconds"]),
        "data_dir_bytes": ctx.data_dir_bytes(name),
    }
    ctx.log(
        f"{name}: {out['events_per_second']:,.0f} events/s "
        f"(last tenth {out['last_tenth_events_per_second']:,.0f}), "
        f"{out['rss_bytes_per_pipeline'] / 1024:.1f} KiB/pipeline, SIGTERM {stop_seconds:.2f}s, "
        f"restart {restart_seconds:.2f}s"
    )
    return out


def run_sizes(ctx: Context, res: SectionResult, sizes: tuple[int, ...]) -> SectionResult:
    """Measure each fleet size in `sizes`, into `res`."""
    points = [_point(ctx, n) for n in sizes]
    res.details.update(teams=TEAMS, batch=BATCH, streams=STREAMS, points=points)
    first = points[0]
    for p in points:
        at = f"{p['pipelines']:,} pipelines"
        ratio = p["last_tenth_events_per_second"] / first["last_tenth_events_per_second"]
        res.add(
            f"ingest of new pipelines, {at}",
            p["events_per_second"],
            "events/s",
            note=f"last tenth {p['last_tenth_events_per_second']:,.0f}/s, "
            f"{ratio:.2f}x of {first['pipelines']:,}",
        )
        if p is not first:
            res.add(
                f"ingest of new pipelines, {at}, over {first['pipelines']:,}",
                p["events_per_second"] / first["events_per_second"],
                "ratio",
                RATIO_TARGET,
            )
        res.add(f"RSS per pipeline, {at}", p["rss_bytes_per_pipeline"] / 1024, "KiB")
        res.add(f"SIGTERM to exit, {at}", p["sigterm_seconds"], "s", SIGTERM_TARGET)
        res.add(
            f"restart to SERVING, {at}",
            p["restart_seconds"],
            "s",
            RESTART_TARGET,
            note=f"server says recovered in {p['recovery_seconds_logged']:.2f}s; "
            f"data {p['data_dir_bytes'] / 2**20:,.0f} MiB",
        )
    return res


def run(ctx: Context) -> SectionResult:
    """The fleet sizes of `make bench` (10,000 and 100,000; 10,000 with --quick)."""
    return run_sizes(ctx, SectionResult(NAME, TITLE), QUICK_SIZES if ctx.quick else SIZES)
