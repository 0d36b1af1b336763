"""Recovery: the newest usable snapshot, then the log after it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from dataclasses import dataclass

from pipewarden.server.alerting.manager import AlertManager
from pipewarden.server.alerting.model import CONSECUTIVE_FAILURES
from pipewarden.server.base.errors import CorruptLogError
from pipewarden.server.core.dedup import SeenExecutions
from pipewarden.server.core.ingest import Ingestor
from pipewarden.server.core.shards import ShardSet
from pipewarden.server.partition.prefetch import Prefetch
from pipewarden.server.partition.snapshot import LoadedSnapshot, SnapshotStore
from pipewarden.server.storage.eventlog import EventLog
from pipewarden.storage.v1 import storage_pb2

__all__ = ["Recovered", "recover"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovered:
    """What recovery did."""

    snapshot_seq: int
    """The log position of the snapshot restored; 0 when none."""
    entries: int
    """Log entries replayed after it."""
    events: int
    """Events those entries applied."""
    seconds: float
    """How long it took."""


async def recover(
    store: SnapshotStore,
    event_log: EventLog,
    ingestor: Ingestor,
    shards: ShardSet,
    seen: SeenExecutions,
    *,
    repair: bool = False,
    alerts: AlertManager | None = None,
    prefetch: Prefetch | None = None,
) -> Recovered:
    """Rebuild the state from disk: executions through `ingestor`, and the alerting state
    into `alerts` when given. Raises CorruptLogError when entries are missing between the
    snapshot and the log (unless `repair`), or when the log itself is corrupt.

    With `prefetch` (started by the caller, closed here), the log's entries it converted in
    its process are applied from its rows."""
    began = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        if prefetch is not None:
            cleanup.callback(prefetch.close)
        after = await _restore(store, event_log, shards, seen, alerts, ingestor.clock())
        if event_log.first_seq > after + 1:
            problem = (
                f"the log starts at entry {event_log.first_seq} but the newest usable snapshot "
                f"covers entries up to {after}: the entries in between are missing"
            )
            if not repair:
                raise CorruptLogError(problem + "; start with --repair to accept the loss")
            log.warning("%s; --repair: going on without them", problem)
        event_log.start_after(after)
        if prefetch is not None:
            prefetch.restored(after)
        entries, events = await _replay(event_log, after, ingestor, alerts, prefetch)
    return Recovered(after, entries, events, time.perf_counter() - began)


async def _restore(
    store: SnapshotStore,
    event_log: EventLog,
    shards: ShardSet,
    seen: SeenExecutions,
    alerts: AlertManager | None,
    now: float,
) -> int:
    """Open the log and restore the newest usable snapshot; return the log position it
    covers (0 without one)."""
    # The log's own recovery (reading and checking every segment) runs beside the snapshot's
    # reading: both are mostly I/O and checksums, which leave the GIL.
    loaded, _ = await asyncio.gather(asyncio.to_thread(_load_latest, store), event_log.open())
    if loaded is None:
        return 0
    # A million pipelines are millions of objects made at once, none of them garbage: the
    # cyclic collector would walk them again and again meanwhile (a fifth of the restore).
    collecting = gc.isenabled()
    gc.disable()
    try:
        shards.restore(loaded.shards, loaded.deltas)
    finally:
        if collecting:
            gc.enable()
    if isinstance(loaded.seen, list):
        # Bare ids of an older format, with event times, which may lie anywhere: kept as if
        # received now, so that each is remembered a whole retention after the upgrade.
        log.info("snapshot %s holds execution ids of an older format", loaded.path.name)
        seen.restore([(team, keys, now) for team, keys, _ in loaded.seen])
    else:
        seen.restore(loaded.seen)
    if alerts is not None and loaded.alerts is not None:
        alerts.restore(loaded.alerts)
    deltas = f" (a whole snapshot and {len(loaded.deltas)} deltas)" if loaded.deltas else ""
    log.info(
        "restored snapshot %s%s: %d pipelines, %d execution ids",
        loaded.path.name,
        deltas,
        len(shards),
        len(seen),
    )
    return loaded.seq


def _load_latest(store: SnapshotStore) -> LoadedSnapshot | None:
    """The newest usable snapshot, once what a failed or interrupted write left is gone."""
    store.remove_temporary()
    return store.load_latest()


async def _replay(
    event_log: EventLog,
    after: int,
    ingestor: Ingestor,
    alerts: AlertManager | None,
    prefetch: Prefetch | None,
) -> tuple[int, int]:
    """Apply the log's entries after `after`; return (entries, events applied)."""
    entries = events = 0
    async for batch in event_log.replay(after):
        for seq, payload in batch:
            converted = prefetch.take(seq, payload) if prefetch is not None else None
            if converted is not None:
                events += ingestor.replay_rows(*converted)
                entries += 1
                continue
            record = storage_pb2.LogRecord.FromString(payload)
            if record.WhichOneof("entry") == "executions":
                events += ingestor.replay_batch(record.executions)
            elif alerts is not None:
                alerts.replay(record)
                _streaks_judged(record, ingestor.shards)
            entries += 1
    if prefetch is not None:
        log.info(
            "replay prefetch: %d of %d log entries converted by the helper process",
            prefetch.used,
            entries,
        )
    return entries, events


def _streaks_judged(record: storage_pb2.LogRecord, shards: ShardSet) -> None:
    """The failure streaks that a logged alert change shows were judged, marked judged where
    they stand at that point of the log: the first detection pass after recovery judges a
    streak again only for what it crossed after (its alert may have been lost with the crash),
    and does not page again for a streak whose alert was fired, or even resolved, before."""
    if record.WhichOneof("entry") != "alerts":
        return
    for stored in record.alerts.alerts:
        if stored.alert.kind == CONSECUTIVE_FAILURES:
            state = shards.get(stored.alert.pipeline_id)
            if state is not None:
                state.streak_judged()
