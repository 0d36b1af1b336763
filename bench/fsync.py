"""What durability costs ingestion: `fsync: always` against `fsync: off`, side by side.

Three servers run at once: Pipewarden with `server.fsync: always` (the default: fdatasync before
each answer, one sync shared by every request of a group commit), Pipewarden with `fsync: off`
(the log is written but never synced) and, as the transport's ceiling, the no-op sink. Each
round builds one set of distinct requests and sends the same bytes to all three, one after the
other, with the ingest section's load client; every other round the order is reversed, so
neither Pipewarden always goes first. The figure is always/off, taken round by round and then
the median; the absolute rates are context. Periodic snapshots are off in both (see
NO_SNAPSHOTS).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import ingest
from bench.common import Context, SectionResult, Target, percentile

__all__ = ["NAME", "TITLE", "run"]

NAME = "fsync"
TITLE = "Ingest throughput (StreamIngest), fsync: always vs off"

SIZES = (100, 1000)
"""Executions per request: the batched sizes, where one sync is shared by many events."""
PIPELINES = 1000
RATIO_TARGET = Target(">=", 0.8)
POLICIES = ("always", "off")
NO_SNAPSHOTS = {"snapshot_interval_seconds": 0, "snapshot_log_bytes": 1 << 50}
"""Both servers log the same bytes, but a snapshot (taken every 256 MiB of log) would land in one
run of a pair and not the other: the comparison is of the log alone."""


PROBE_SYNCS = 200
"""fdatasync calls timed for context: on a disk where one costs next to nothing, always/off says
little about a disk where it does not."""


def _plan(quick: bool) -> tuple[dict[int, int], int, float]:
    """Events per run for each size, rounds, and the time limit of one run."""
    if quick:
        return {100: 20_000, 1000: 40_000}, 1, 5.0
    return {100: 150_000, 1000: 200_000}, 4, 15.0


def _config(fsync: str) -> dict[str, Any]:
    return {"server": {"fsync": fsync, **NO_SNAPSHOTS}, "detection": {"enabled": False}}


def _sync_latency(directory: Path, size: int, count: int) -> list[float]:
    """Seconds of each fdatasync after appending `size` bytes, `count` times, in `directory`:
    what one group commit's sync costs on this disk."""
    path = directory / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    took = []
    try:
        block = os.urandom(size)
        for _ in range(count):
            os.write(fd, block)
            began = time.perf_counter()
            os.fdatasync(fd)
            took.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink()
    return took


def _filesystem(path: Path) -> str:
    """The type and device of the filesystem holding `path`, from /proc/mounts."""
    best, found = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return found
    resolved = str(path.resolve())
    for line in mounts:
        device, point, kind, *_ = line.split()
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, found = point, f"{kind} on {device} (mounted at {point})"
    return found


def run(ctx: Context) -> SectionResult:
    """Measure events/s of Pipewarden under each fsync policy, and of the sink, per size."""
    res = SectionResult(NAME, TITLE)
    events, rounds, max_seconds = _plan(ctx.quick)
    res.details.update(
        streams=ingest.STREAMS,
        pipelines=PIPELINES,
        rounds=rounds,
        events_per_run=events,
        filesystem=_filesystem(ctx.workdir),
        configs={policy: _config(policy) for policy in POLICIES},
        sizes={},
    )
    with (
        ctx.worker() as worker,
        ctx.sink("fsync-sink") as sink,
        ctx.pipewarden("fsync-always", _config("always")) as always,
        ctx.pipewarden("fsync-off", _config("off")) as off,
    ):
        worker.call(ingest.setup, PIPELINES)
        for server in (sink, always, off):
            ingest.measure(worker, server, "warmup", max_seconds)
        for size in SIZES:
            runs: dict[str, list[dict[str, Any]]] = {"sink": [], "always": [], "off": []}
            ratios: list[float] = []
            for r in range(rounds):
                built = worker.call(ingest.build, size, events[size], 50_000 + size * 1000 + r)
                order = [("sink", sink), ("always", always), ("off", off)]
                if r % 2:
                    order.reverse()
                rates = {}
                for label, server in order:
                    out = ingest.measure(worker, server, "requests", max_seconds)
                    out.update(built_requests=built["requests"], request_bytes=built["bytes"])
                    runs[label].append(out)
                    rates[label] = out["events_per_second"]
                ratios.append(rates["always"] / rates["off"])
                ctx.log(
                    f"fsync x{size} round {r + 1}/{rounds}: sink {rates['sink']:,.0f}/s, "
                    f"always {rates['always']:,.0f}/s, off {rates['off']:,.0f}/s, "
                    f"always/off {ratios[-1]:.2f}"
                )
            _report(res, size, runs, ratios)
            res.details["sizes"][str(size)]["request_bytes"] = built["bytes"] // built["requests"]
        res.details["data_dir_bytes"] = {
            policy: ctx.data_dir_bytes(f"fsync-{policy}") for policy in POLICIES
        }
    _report_sync(res, ctx.workdir, max(SIZES))
    return res


def _report_sync(res: SectionResult, directory: Path, executions: int) -> None:
    size = res.details["sizes"][str(executions)]["request_bytes"]
    ms = [t * 1000 for t in _sync_latency(directory, size, PROBE_SYNCS)]
    res.details["fdatasync_ms"] = {"append_bytes": size, "samples": ms}
    res.add(
        f"fdatasync after a {size / 1024:,.0f} KiB append, p50",
        percentile(ms, 50),
        "ms",
        note=f"the size of one {executions:,}-execution request; p99 "
        f"{percentile(ms, 99):.2f} ms, {len(ms)} syncs on "
        f"{res.details['filesystem'].split(' (')[0]}",
    )


def _report(
    res: SectionResult, size: int, runs: dict[str, list[dict[str, Any]]], ratios: list[float]
) -> None:
    summary: dict[str, Any] = {"ratios": ratios, "runs": runs}
    for label, name in (("sink", "sink"), ("always", "fsync: always"), ("off", "fsync: off")):
        rates = [r["events_per_second"] for r in runs[label]]
        cpu = statistics.median(r["server_cpu"] for r in runs[label])
        summary[label] = {"median": statistics.median(rates), "best": max(rates), "cpu": cpu}
        res.add(
            f"{name} events/s, {size:,} exec/request",
            statistics.median(rates),
            "events/s",
            note=f"median of {len(rates)}; best {max(rates):,.0f}; server CPU {cpu:.0%}",
        )
    best_ratio = summary["always"]["best"] / summary["off"]["best"]
    summary["ratio_median"] = statistics.median(ratios)
    summary["ratio_of_best"] = best_ratio
    res.add(
        f"ratio always/off, {size:,} exec/request",
        statistics.median(ratios),
        "ratio",
        RATIO_TARGET,
        note=f"median of paired rounds {', '.join(f'{x:.2f}' for x in ratios)}; "
        f"best/best {best_ratio:.2f}",
    )
    res.details["sizes"][str(size)] = summary
