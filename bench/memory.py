"""Resident memory per pipeline, and per remembered execution id.

A fresh Pipewarden is warmed up (its own pipelines, the same request size and streams), then
its VmRSS is read; 100,000 new pipelines get two executions each (requests of 1,000), and VmRSS
is read again: the growth over 100,000 is the cost of a pipeline with two remembered execution
ids. A further 200,000 executions onto those pipelines add no pipeline, only ids (36-character
UUID-like, as runners send) and whatever else the server keeps per execution: that growth over
200,000 is the cost of one remembered id, and with it the pipeline's share without its ids.

RSS counts what the process holds, including freed memory the allocator keeps, so these are
upper bounds; each reading waits for the server to settle first.

After a restart, the ids come back in a snapshot's compact form (server/core/dedup.py, Remembered)
until the server has moved them into its live set: the sizes of its arrays for as many ids as the
per-id measurement adds, over their count, are that form's cost of an id.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from typing import Any

from bench import loadgen
from bench.common import STORE, Context, SectionResult, ServerProcess, Target
from bench.workload import Fleet

__all__ = ["NAME", "TITLE", "run"]

NAME = "memory"
TITLE = "Resident memory"

RUNS_PER_PIPELINE = 2
EXTRA_PER_PIPELINE = 2
"""Further executions per pipeline for the per-id measurement (200,000 at 100,000 pipelines)."""
BATCH = 1000
KIB_TARGET = Target("<=", 8.0, "KiB")
SEND_SECONDS = 120.0
"""The most one load of requests may take."""


def _plan(quick: bool) -> int:
    """Pipelines to add."""
    return 10_000 if quick else 100_000


# -- in the client worker -------------------------------------------------------------------------


def _prepare(pipelines: int) -> dict[str, Any]:
    fleet = STORE["fleet"] = Fleet(pipelines, prefix="m")
    warm = STORE["warm"] = Fleet(1000, prefix="warm")
    STORE["warmup"] = warm.requests([p for _ in range(4) for p in range(warm.size)], BATCH)
    runs = [p for _ in range(RUNS_PER_PIPELINE) for p in range(pipelines)]
    STORE["pipelines"] = fleet.requests(runs, BATCH)
    extra = [p for _ in range(EXTRA_PER_PIPELINE) for p in range(pipelines)]
    STORE["extra"] = fleet.requests(extra, BATCH)
    return {
        "request_bytes": sum(len(r) for r in STORE["pipelines"]),
        "extra_request_bytes": sum(len(r) for r in STORE["extra"]),
    }


def _compact(count: int) -> dict[str, float]:
    """Bytes per id of the compact form of `count` UUID-like ids, by part."""
    from pipewarden.server.core.dedup import ImageBuilder, SeenExecutions, key

    rng = random.Random(11)
    # Remembered by pipeline and id together: a pipeline id of 12 characters in each key.
    ids = [key("sales.orders", str(uuid.UUID(int=rng.getrandbits(128)))) for _ in range(count)]
    seen = SeenExecutions(count)
    for i in range(0, count, BATCH):
        seen.add_batch("team", ids[i : i + BATCH], 0.0)
    builder = ImageBuilder(seen)
    for _ in builder.steps():
        pass
    image = builder.result
    parts = {
        "bytes": image.blob,
        "offsets": image.starts,
        "hashes": image.hashes,
        "table": image.table,
    }
    return {name: sys.getsizeof(part) / count for name, part in parts.items()}


def _send(target: str, key: str) -> dict[str, Any]:
    requests = STORE.pop(key)
    return loadgen.blast(target, requests, streams=4, max_seconds=SEND_SECONDS)


# -- in the harness -------------------------------------------------------------------------------


def _settled_rss(server: ServerProcess, seconds: float = 1.0) -> int:
    """VmRSS once the server has been idle a moment (the smaller of two readings)."""
    time.sleep(seconds)
    first = server.rss_bytes()
    time.sleep(seconds / 2)
    return min(first, server.rss_bytes())


def run(ctx: Context) -> SectionResult:
    """Measure RSS growth per pipeline and per remembered execution id."""
    res = SectionResult(NAME, TITLE)
    pipelines = _plan(ctx.quick)
    extra = pipelines * EXTRA_PER_PIPELINE
    with ctx.worker() as worker, ctx.pipewarden("memory-pipewarden") as server:
        sizes = worker.call(_prepare, pipelines)
        timeout = SEND_SECONDS + 60
        warm = worker.call(_send, server.target, "warmup", timeout=timeout)
        before = _settled_rss(server)
        added = worker.call(_send, server.target, "pipelines", timeout=timeout)
        after = _settled_rss(server)
        more = worker.call(_send, server.target, "extra", timeout=timeout)
        after_ids = _settled_rss(server)
        peak = server.peak_rss_bytes()
        server.check_alive()
        for label, out, expected in (
            ("pipelines", added, pipelines * RUNS_PER_PIPELINE),
            ("extra executions", more, extra),
        ):
            if out["accepted"] != expected:
                raise RuntimeError(f"{label}: {out['accepted']} of {expected} accepted: {out}")
        data_dir = ctx.data_dir_bytes("memory-pipewarden")
        compact = worker.call(_compact, extra, timeout=120)
    per_pipeline = (after - before) / pipelines
    per_id = (after_ids - after) / extra
    without_ids = per_pipeline - RUNS_PER_PIPELINE * per_id
    ctx.log(
        f"memory: RSS {before / 2**20:,.1f} -> {after / 2**20:,.1f} MiB with {pipelines:,} "
        f"pipelines -> {after_ids / 2**20:,.1f} MiB with {extra:,} more executions"
    )
    wire = sizes["request_bytes"] / (pipelines * RUNS_PER_PIPELINE)
    res.details.update(
        pipelines=pipelines,
        executions_per_pipeline=RUNS_PER_PIPELINE,
        extra_executions=extra,
        batch=BATCH,
        rss_bytes={"before": before, "after_pipelines": after, "after_extra": after_ids},
        peak_rss_bytes=peak,
        data_dir_bytes=data_dir,
        wire_bytes_per_execution=wire,
        load={"warmup": warm, "pipelines": added, "extra": more},
        compact_bytes_per_id=compact,
    )
    at = f"{pipelines:,} pipelines"
    res.add(
        f"RSS per pipeline (with its {RUNS_PER_PIPELINE} ids), {at}",
        per_pipeline / 1024,
        "KiB",
        KIB_TARGET,
        note=f"{per_pipeline:,.0f} B; RSS {before / 2**20:,.0f} -> {after / 2**20:,.0f} MiB",
    )
    res.add(
        f"RSS per remembered execution id, {extra:,} more executions",
        per_id,
        "B",
        note=f"36-char ids; everything kept per execution; {wire:.0f} B each on the wire",
    )
    res.add(
        f"restored id, in the snapshot's compact form, {extra:,} ids",
        sum(compact.values()),
        "B",
        note="until moved into the live set; "
        + ", ".join(f"{name} {size:.1f} B" for name, size in compact.items()),
    )
    res.add(
        f"RSS per pipeline without its ids, {at}",
        without_ids / 1024,
        "KiB",
        note=f"{without_ids:,.0f} B",
    )
    return res
