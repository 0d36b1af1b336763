"""Replaying a log in the bench process: the least any replay must do, against the server's own.

(i) read and parse: `WriteAheadLog.replay` (reads the segments, checks the CRCs), then decode
each LogRecord and its IngestRequest and read every field of every execution once, as the sink
does; the log's own opening scan is timed apart. (ii) `server.recovery.recover()` with a fresh
ShardSet, SeenExecutions, Ingestor and SnapshotStore on the same directory. (iii) the same with
the replay prefetch (`server/partition/prefetch.py`), as `pipewarden serve` starts it: a
forked helper converts the log from its newest entry while this process replays from its
oldest. Each is timed with the collector off: the server tunes its own, and what it costs
there is in the start times of the recovery section.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Context
from bench.sink import read_every_field
from pipewarden.server import config
from pipewarden.server.core.dedup import SeenExecutions
from pipewarden.server.core.ingest import Ingestor
from pipewarden.server.core.shards import ShardSet
from pipewarden.server.partition.prefetch import Prefetch
from pipewarden.server.partition.recovery import recover
from pipewarden.server.partition.snapshot import SnapshotStore
from pipewarden.server.storage.wal import WriteAheadLog
from pipewarden.storage.v1 import storage_pb2
from pipewarden.v1 import service_pb2

__all__ = ["full_recovery", "rates", "read_and_parse"]


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def read_and_parse(data_dir: Path) -> dict[str, Any]:
    """(i): every entry of the log read, checked, decoded, and every field read once."""
    wal = WriteAheadLog(data_dir / "wal", fsync="off")
    began = time.perf_counter()
    await wal.open()
    opened = time.perf_counter()
    events = entries = 0
    try:
        for _, payload in wal.read(0):
            batch = storage_pb2.LogRecord.FromString(payload).executions
            _ = (batch.received_unix_nanos, batch.applied)
            events += read_every_field(service_pb2.IngestRequest.FromString(batch.request))
            entries += 1
        seconds = time.perf_counter() - opened
    finally:
        await wal.close()
    return {
        "events": events,
        "entries": entries,
        "seconds": seconds,
        "open_seconds": opened - began,
    }


async def full_recovery(
    data_dir: Path, document: dict[str, Any], *, prefetch: bool = False
) -> dict[str, Any]:
    """(ii), or (iii) with `prefetch`: what the server does at start, into a fresh state, with
    the settings of the configuration `document` (as in pipewarden.yaml)."""
    sc = config.parse(document).server
    shards = ShardSet(sc.shards, sc.window)
    seen = SeenExecutions(sc.max_seen_executions, sc.dedup_retention_seconds)
    wal = WriteAheadLog(data_dir / "wal", fsync="off", segment_bytes=sc.wal_segment_bytes)
    ingestor = Ingestor(shards, seen, wal, sc.limits)
    store = SnapshotStore(data_dir / "snapshots")
    began = time.perf_counter()
    helper = None
    if prefetch:
        helper = Prefetch.start(data_dir / "wal", data_dir / "snapshots", sc.limits)
    try:
        done = await recover(store, wal, ingestor, shards, seen, prefetch=helper)
        seconds = time.perf_counter() - began
    finally:
        await wal.close()
    return {
        "events": done.events,
        "entries": done.entries,
        "seconds": seconds,
        "pipelines": len(shards),
        "ids": len(seen),
        "prefetched_entries": helper.used if helper is not None else 0,
    }


def rates(
    ctx: Context, data_dir: Path, document: dict[str, Any], trials: int, expect: int
) -> dict[str, list[dict[str, Any]]]:
    """Time (i), (ii) and (iii) `trials` times each, in turn, the order reversed every other
    trial; check that each saw `expect` events. Returns every run of each, under "read",
    "recover" and "prefetch"."""
    runs: dict[str, list[dict[str, Any]]] = {"read": [], "recover": [], "prefetch": []}
    kinds = ["read", "recover", "prefetch"]
    for t in range(trials):
        for label in kinds if t % 2 == 0 else kinds[::-1]:
            with _collector_off():
                if label == "read":
                    out = asyncio.run(read_and_parse(data_dir))
                else:
                    prefetch = label == "prefetch"
                    out = asyncio.run(full_recovery(data_dir, document, prefetch=prefetch))
            if out["events"] != expect:
                raise RuntimeError(f"replay {label} saw {out['events']} events, not {expect}")
            out["events_per_second"] = out["events"] / out["seconds"]
            runs[label].append(out)
            ctx.log(
                f"recovery replay {label} {t + 1}/{trials}: {out['events_per_second']:,.0f} "
                f"events/s ({out['seconds']:.2f}s)"
            )
        gc.collect()
    return runs
