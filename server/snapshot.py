"""Snapshots: the whole state at one log position, written without stopping ingestion.

Layout under `<data-dir>/snapshots/`: `<seq>.snap`, named by the log sequence number it reflects
(20 digits). A file is a 32-byte header (magic, format version, seq, CRC-32C of the header) and
frames of `length u32 | crc u32 | kind u8 | protobuf`, where crc is the CRC-32C of kind and
message: team totals, the alerting state (alerts, silences, alert history), pipeline chunks,
execution-id chunks, and last an END frame with the counts. A file without a whole END frame is
not a snapshot.

Writing: to `<seq>.snap.tmp`, fsync, rename, fsync the directory; the two newest are kept, and
log segments wholly covered by the oldest kept one are deleted. The pipelines are dumped a chunk
at a time while ingestion goes on (see shards.SnapshotJob).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import crc32c

from pipewarden.storage.v1 import storage_pb2
from server import failpoints, metrics
from server.dedup import SeenExecutions
from server.eventlog import EventLog
from server.readonly import mapped
from server.shards import ShardSet

__all__ = ["LoadedSnapshot", "SnapshotStore"]

log = logging.getLogger(__name__)

MAGIC = b"PWSNAP\r\n"
VERSION = 1
HEADER = struct.Struct("<8sIIQI4x")  # magic, version, reserved, seq, crc, pad
FRAME = struct.Struct("<IIB")  # length of the message, crc of kind + message, kind
TEAMS, PIPELINES, SEEN, END, ALERTS = 1, 2, 3, 4, 5
CHUNK_PIPELINES = 500
FLUSH_BYTES = 1 << 20


@dataclass
class LoadedSnapshot:
    """A snapshot read back whole."""

    seq: int
    path: Path
    shards: list[storage_pb2.ShardSnapshot]
    seen: list[tuple[list[str], float]]
    pipelines: int
    alerts: storage_pb2.AlertsSnapshot | None = None
    """The alerting state; None in a snapshot written before alerting existed."""


def _header(seq: int) -> bytes:
    head = HEADER.pack(MAGIC, VERSION, 0, seq, 0)
    return HEADER.pack(MAGIC, VERSION, 0, seq, crc32c.crc32c(head[:24]))


def _frame(kind: int, body: bytes) -> bytes:
    crc = crc32c.crc32c(body, crc32c.crc32c(bytes((kind,))))
    return FRAME.pack(len(body), crc, kind) + body


def _snapshot_name(seq: int) -> str:
    return f"{seq:020d}.snap"


class SnapshotStore:
    """Writes, lists and reads the snapshots of one data directory."""

    def __init__(self, directory: str | Path, *, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Snapshot files, newest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.glob("*.snap") if p.stem.isdigit()]
        return sorted(found, key=lambda p: int(p.stem), reverse=True)

    # -- reading ---------------------------------------------------------------------------------

    def load_latest(self) -> LoadedSnapshot | None:
        """The newest whole snapshot, falling back to older ones past corrupt files."""
        for path in self.paths():
            try:
                return self.load(path)
            except ValueError as e:
                log.warning("snapshot %s is unusable (%s); trying an older one", path, e)
        return None

    @staticmethod
    def load(path: Path) -> LoadedSnapshot:
        """Read and check one snapshot file; ValueError says what is wrong with it."""
        with mapped(path) as data, memoryview(data) as view:
            if len(data) < HEADER.size:
                raise ValueError("header is torn")
            magic, version, _, seq, crc = HEADER.unpack_from(data, 0)
            if magic != MAGIC:
                raise ValueError("not a Pipewarden snapshot (bad magic)")
            if crc32c.crc32c(data[:24]) != crc:
                raise ValueError("header checksum mismatch")
            if version != VERSION:
                raise ValueError(f"format version {version}; this build reads version {VERSION}")
            shards: dict[int, storage_pb2.ShardSnapshot] = {}
            seen: list[tuple[list[str], float]] = []
            pipelines = 0
            alerts: storage_pb2.AlertsSnapshot | None = None
            offset = HEADER.size
            end: storage_pb2.SnapshotEnd | None = None
            while offset < len(data):
                if len(data) - offset < FRAME.size:
                    raise ValueError(f"torn frame at byte {offset}")
                length, crc, kind = FRAME.unpack_from(data, offset)
                start = offset + FRAME.size
                stop = start + length
                if stop > len(data):
                    raise ValueError(f"torn frame at byte {offset}")
                if crc32c.crc32c(view[start:stop], crc32c.crc32c(bytes((kind,)))) != crc:
                    raise ValueError(f"checksum mismatch at byte {offset}")
                # Parsed from the map, not copied first: protobuf takes any buffer, though its
                # type stubs say bytes.
                body = cast(bytes, view[start:stop])
                if kind in (TEAMS, PIPELINES):
                    part = storage_pb2.ShardSnapshot.FromString(body)
                    whole = shards.get(part.index)
                    if whole is None:
                        shards[part.index] = part
                    else:  # parsed again into the shard's message: appended, not copied
                        whole.MergeFromString(body)
                    pipelines += len(part.pipelines)
                elif kind == SEEN:
                    chunk = storage_pb2.SeenChunk.FromString(body)
                    if chunk.joined_ids:
                        ids = chunk.joined_ids.decode().split("\n")
                    else:
                        ids = list(chunk.execution_ids)
                    seen.append((ids, chunk.max_event_time))
                elif kind == ALERTS:
                    alerts = storage_pb2.AlertsSnapshot.FromString(body)
                elif kind == END:
                    end = storage_pb2.SnapshotEnd.FromString(body)
                    offset = stop
                    break
                else:
                    raise ValueError(f"unknown frame kind {kind} at byte {offset}")
                offset = stop
            if end is None:
                raise ValueError("incomplete: no end frame")
            if offset != len(data):
                raise ValueError(f"{len(data) - offset} bytes after the end frame")
            if end.seq != seq or end.pipelines != pipelines:
                raise ValueError("end frame disagrees with the contents")
            if sum(len(ids) for ids, _ in seen) != end.execution_ids:
                raise ValueError("end frame disagrees with the execution ids")
            if (len(alerts.alerts) if alerts is not None else 0) != end.alerts:
                raise ValueError("end frame disagrees with the alerts")
            del body  # the last view into the map, which closes with the block
        count = max(shards, default=-1) + 1
        ordered = [shards.get(i, storage_pb2.ShardSnapshot(index=i)) for i in range(count)]
        return LoadedSnapshot(seq, path, ordered, seen, pipelines, alerts)

    # -- writing ---------------------------------------------------------------------------------

    async def write(
        self,
        shards: ShardSet,
        seen: SeenExecutions,
        event_log: EventLog,
        alerts: Callable[[], storage_pb2.AlertsSnapshot] | None = None,
    ) -> Path:
        """Write a snapshot of the state as it is now, yielding to ingestion while it works.
        `alerts` dumps the alerting state; it is called at once, at the snapshot's position."""
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        seq = event_log.last_seq
        alerting = alerts() if alerts is not None else None
        job = shards.begin_snapshot()
        try:
            seen_chunks = seen.chunks()
            await loop.run_in_executor(
                None, lambda: self.directory.mkdir(parents=True, exist_ok=True)
            )
            final = self.directory / _snapshot_name(seq)
            tmp = final.with_name(final.name + ".tmp")
            fd = await loop.run_in_executor(
                None, lambda: os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            )
            try:
                buffer = bytearray(_header(seq))
                for team_part in job.teams:
                    buffer += _frame(TEAMS, team_part.SerializeToString())
                if alerting is not None:
                    buffer += _frame(ALERTS, alerting.SerializeToString())
                pipelines = 0
                for index, batch in job.chunks(CHUNK_PIPELINES):
                    part = storage_pb2.ShardSnapshot(index=index, pipelines=batch)
                    buffer += _frame(PIPELINES, part.SerializeToString())
                    pipelines += len(batch)
                    if len(buffer) >= FLUSH_BYTES:
                        await loop.run_in_executor(None, _write_all, fd, bytes(buffer))
                        buffer.clear()
                        failpoints.hit("snapshot-mid-write")
                    await asyncio.sleep(0)  # let ingestion in between chunks
                ids = 0
                for chunk_ids, max_time in seen_chunks:
                    msg = _seen_chunk(chunk_ids, max_time)
                    buffer += _frame(SEEN, msg.SerializeToString())
                    ids += len(chunk_ids)
                    if len(buffer) >= FLUSH_BYTES:
                        await loop.run_in_executor(None, _write_all, fd, bytes(buffer))
                        buffer.clear()
                        await asyncio.sleep(0)
                end = storage_pb2.SnapshotEnd(
                    seq=seq,
                    pipelines=pipelines,
                    execution_ids=ids,
                    shards=len(shards.shards),
                    alerts=len(alerting.alerts) if alerting is not None else 0,
                )
                buffer += _frame(END, end.SerializeToString())
                await loop.run_in_executor(None, _write_all, fd, bytes(buffer))
                failpoints.hit("snapshot-mid-write")
                await loop.run_in_executor(None, os.fsync, fd)
            finally:
                os.close(fd)
        finally:
            shards.end_snapshot()
        # The snapshot may reflect entries appended but not yet durable: it must not outlive
        # them, or a restart would number new entries as if they were inside it.
        await event_log.wait_durable(seq)
        failpoints.hit("snapshot-before-rename")

        def commit() -> None:
            os.rename(tmp, final)
            _fsync_dir(self.directory)

        await loop.run_in_executor(None, commit)
        metrics.SNAPSHOT_SECONDS.observe(time.perf_counter() - began)
        log.info(
            "snapshot %s: %d pipelines, %d execution ids, %.1f MiB, %.2fs",
            final.name,
            pipelines,
            ids,
            final.stat().st_size / 2**20,
            time.perf_counter() - began,
        )
        return final

    def prune(self) -> int | None:
        """Delete snapshots beyond the newest `keep`; return the oldest kept one's seq."""
        paths = self.paths()
        for old in paths[self.keep :]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        for tmp in self.directory.glob("*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        kept = paths[: self.keep]
        return int(kept[-1].stem) if kept else None


def _seen_chunk(ids: list[str], max_time: float) -> storage_pb2.SeenChunk:
    joined = "\n".join(ids)
    if ids and joined.count("\n") == len(ids) - 1:
        return storage_pb2.SeenChunk(joined_ids=joined.encode(), max_event_time=max_time)
    return storage_pb2.SeenChunk(execution_ids=ids, max_event_time=max_time)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
