"""An in-process node of the durable parts (log, snapshots, ingestion) that can crash."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pipewarden.server.core.dedup import SeenExecutions
from pipewarden.server.core.ingest import Ingestor, IngestOutcome
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.shards import ShardSet
from pipewarden.server.partition.prefetch import Prefetch
from pipewarden.server.partition.recovery import recover
from pipewarden.server.partition.snapshot import SnapshotStore
from pipewarden.server.storage.wal import WriteAheadLog
from pipewarden.v1 import service_pb2


class Node:
    """Log + snapshots + shards, recovered from `data` like the server does it."""

    def __init__(
        self, data: Path, shards: int = 4, segment_bytes: int = 2048, capacity: int = 10**6
    ) -> None:
        self.data = data
        self.shards = ShardSet(shards, window=16)
        self.seen = SeenExecutions(capacity)
        self.wal = WriteAheadLog(data / "wal", segment_bytes=segment_bytes)
        self.store = SnapshotStore(data / "snapshots")
        self.ingestor = Ingestor(self.shards, self.seen, self.wal, IngestLimits())

    async def open(self, *, prefetch: bool = False) -> Prefetch | None:
        """Recover; with `prefetch`, through a replay prefetch forked whatever the tail's
        size, and left to write all it will first (returned, to see what it did)."""
        helper = None
        if prefetch:
            helper = Prefetch.start(
                self.data / "wal", self.data / "snapshots", self.ingestor.limits, min_bytes=0
            )
            assert helper is not None
            helper.finish()
        await recover(self.store, self.wal, self.ingestor, self.shards, self.seen, prefetch=helper)
        return helper

    async def ingest(self, request: service_pb2.IngestRequest) -> IngestOutcome:
        outcome, seq = self.ingestor.ingest(request.SerializeToString(), request)
        await self.wal.wait_durable(seq)
        return outcome

    async def snapshot(self) -> None:
        await self.store.write(self.shards, self.seen, self.wal)
        oldest = self.store.prune()
        if oldest is not None:
            await self.wal.truncate_before(oldest)

    async def close(self) -> None:
        await self.wal.close()

    def crash(self) -> None:
        """Die like kill -9: whatever was written stays, nothing else happens."""
        wal = self.wal
        if wal._writer is not None:
            wal._writer.cancel()
        if wal._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(wal._fd)
            wal._fd = -1
        wal._closed = True
        wal._executor.shutdown(wait=True)

    def totals(self) -> dict[str, tuple[int, int, int, int]]:
        """Per pipeline: succeeded, failed, cancelled, records."""
        return {
            p.pipeline_id: (p.succeeded, p.failed, p.cancelled, p.records_sum)
            for p in self.shards.pipelines()
        }

    def state(self) -> list[bytes]:
        """Every shard, serialized: equal bytes, equal state."""
        return [s.SerializeToString(deterministic=True) for s in self.shards.dump()]
