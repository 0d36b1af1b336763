"""Snapshots: the whole state at one log position, written without stopping ingestion.

Layout under `<data-dir>/snapshots/`: `<seq>.snap`, named by the log sequence number it reflects
(20 digits). A file is a 32-byte header (magic, format version, seq, CRC-32C of the header) and
frames of `length u32 | crc u32 | kind u8 | body`, where crc is the CRC-32C of kind and body:
team totals, the alerting state (alerts, silences, alert history), pipeline chunks (protobuf),
the remembered executions in their compact form (dedup.Remembered: a header frame, then
its arrays raw, in parts of at most 8 MiB), and last an END frame with the counts. A file without
a whole END frame is not a snapshot.

Version 3 remembers an execution by its pipeline and id together (dedup.key), and each chunk's
team. Versions 1 (the ids in protobuf chunks) and 2 (the compact form) remembered bare ids
without teams: they are still read, as legacy keys (dedup.legacy_key) of the team LEGACY.

Deltas: `<seq>-<parent>.delta`, in the same format, holds only the pipelines changed since the
snapshot at `<parent>` began (a whole snapshot or another delta), and the whole of the rest (team
totals, alerting state, remembered executions, which are compact). A snapshot of a large fleet
is then written at the cost of what changed: the stop's snapshot too. A whole snapshot is
written again when the deltas since the last one hold as many pipelines as it does, or after
MAX_DELTAS of them, so that a start reads a bounded chain: the newest usable whole snapshot, then
the deltas that follow it, parent to child, as far as they are usable (the log has the rest).
A build that knows no deltas reads the whole snapshot and replays the log after it.

Writing: to `<name>.tmp`, fsync, rename, fsync the directory (a write that fails removes its
`.tmp`, and a start removes any left by a crash); the two newest whole snapshots are kept with
the deltas after the older one, and log segments wholly covered by the oldest kept one are
deleted. The pipelines are dumped a chunk at a time while ingestion goes on (see
shards.SnapshotJob), and so is the ids' table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import crc32c

from pipewarden.server.base import failpoints, metrics
from pipewarden.server.base.errors import DiskError, is_disk_error
from pipewarden.server.core.dedup import (
    LEGACY,
    ImageBuilder,
    Remembered,
    SeenExecutions,
    legacy_key,
)
from pipewarden.server.core.shards import ShardSet, SnapshotJob, encode_shard_part
from pipewarden.server.storage.descriptors import open_file
from pipewarden.server.storage.eventlog import EventLog
from pipewarden.server.storage.files import fsync_dir as _fsync_dir
from pipewarden.server.storage.files import remove as _remove
from pipewarden.server.storage.files import write_all as _write_all
from pipewarden.server.storage.readonly import mapped
from pipewarden.storage.v1 import storage_pb2

__all__ = ["LoadedSnapshot", "SnapshotStore"]

log = logging.getLogger(__name__)

MAGIC = b"PWSNAP\r\n"
VERSION = 3
READS = (1, 2, 3)
HEADER = struct.Struct("<8sIIQI4x")  # magic, version, reserved, seq, crc, pad
FRAME = struct.Struct("<IIB")  # length of the message, crc of kind + message, kind
TEAMS, PIPELINES, SEEN, END, ALERTS, IDS, IDS_PART = 1, 2, 3, 4, 5, 6, 7
CHUNK_PIPELINES = 500
SLICE_SECONDS = 0.01
"""How long the writer works before it lets ingestion in: about what one request of a thousand
events takes, so that a snapshot keeps its share of the loop while ingestion saturates it (with
a turn per chunk, it had a few percent, and a stop found most of it still to write)."""
FLUSH_BYTES = 1 << 20
PART_BYTES = 8 << 20
MAX_DELTAS = 8
"""Deltas after a whole snapshot before the next whole one (a start reads all of them)."""
IDS_HEADER = struct.Struct("<QQQQBB6x")
"""The ids' header frame: ids, chunks, table slots, overflow ids, the table's item size, and 1
when written little-endian; then each chunk's end (u64) and each chunk's latest time (f64);
from version 3 on, each chunk's team as an index (u32) into the names that follow: their count
(u32), then each name's length (u32) and UTF-8 bytes. The u32s of the names are little-endian."""
NAME = struct.Struct("<I")
BLOB, STARTS, HASHES, TABLE, OVERFLOW = range(5)  # the parts of the ids, in IDS_PART frames


@dataclass
class LoadedSnapshot:
    """A snapshot read back whole."""

    seq: int
    path: Path
    shards: list[storage_pb2.ShardSnapshot]
    seen: Remembered | list[tuple[str, list[str], float]]
    """The remembered executions: their compact form, or (team, keys, time) chunks of legacy
    keys in a file of version 1 or 2 (their times are event times, not times received)."""
    pipelines: int
    alerts: storage_pb2.AlertsSnapshot | None = None
    """The alerting state; None in a snapshot written before alerting existed."""
    deltas: list[list[storage_pb2.ShardSnapshot]] = field(default_factory=list)
    """The shards of the deltas read after the whole snapshot, oldest first (for
    ShardSet.restore); `seq`, `path`, `seen` and `alerts` are then the newest delta's."""


@dataclass
class _Chain:
    """The snapshots written since the newest whole one, as the next delta builds on them."""

    base_pipelines: int
    """Pipelines in the whole snapshot."""
    delta_pipelines: int
    """Pipelines in the deltas after it, summed."""
    deltas: int
    """How many deltas follow it."""
    last: Path
    """The newest file of the chain."""
    last_seq: int
    """Its log position."""


def _header(seq: int) -> bytes:
    head = HEADER.pack(MAGIC, VERSION, 0, seq, 0)
    return HEADER.pack(MAGIC, VERSION, 0, seq, crc32c.crc32c(head[:24]))


def _frame(kind: int, body: bytes) -> bytes:
    crc = crc32c.crc32c(body, crc32c.crc32c(bytes((kind,))))
    return FRAME.pack(len(body), crc, kind) + body


def _snapshot_name(seq: int) -> str:
    return f"{seq:020d}.snap"


def _delta_name(seq: int, parent: int) -> str:
    return f"{seq:020d}-{parent:020d}.delta"


class SnapshotStore:
    """Writes, lists and reads the snapshots of one data directory."""

    def __init__(self, directory: str | Path, *, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self._chain: _Chain | None = None
        """What the next delta builds on; None: the next snapshot is whole."""

    def paths(self) -> list[Path]:
        """Whole snapshot files, newest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.glob("*.snap") if p.stem.isdigit()]
        return sorted(found, key=lambda p: int(p.stem), reverse=True)

    def deltas(self) -> list[tuple[int, int, Path]]:
        """Delta files as (seq, parent's seq, path), newest first."""
        if not self.directory.is_dir():
            return []
        found: list[tuple[int, int, Path]] = []
        for path in self.directory.glob("*.delta"):
            seq, _, parent = path.stem.partition("-")
            if seq.isdigit() and parent.isdigit() and int(parent) < int(seq):
                found.append((int(seq), int(parent), path))
        return sorted(found, reverse=True)

    def newest(self) -> Path | None:
        """The end of the newest chain by the files' names (a start restores it, unless a
        file in it proves unusable): the newest whole snapshot, or the last delta after it."""
        paths = self.paths()
        if not paths:
            return None
        children = self._children()
        newest, seq = paths[0], int(paths[0].stem)
        while children.get(seq):
            seq, newest = children[seq][0]
        return newest

    def _children(self) -> dict[int, list[tuple[int, Path]]]:
        """Deltas by their parent's seq, newest first."""
        children: dict[int, list[tuple[int, Path]]] = {}
        for seq, parent, path in self.deltas():
            children.setdefault(parent, []).append((seq, path))
        return children

    # -- reading ---------------------------------------------------------------------------------

    def load_latest(self) -> LoadedSnapshot | None:
        """The newest whole snapshot, falling back to older ones past corrupt files, with the
        deltas that follow it as far as they are usable; the next delta written builds on
        what this returns."""
        self._chain = None
        children = self._children()
        for path in self.paths():
            try:
                base = self.load(path)
            except ValueError as e:
                log.warning("snapshot %s is unusable (%s); trying an older one", path, e)
                continue
            chain = _Chain(base.pipelines, 0, 0, base.path, base.seq)
            newest = base
            while children.get(newest.seq):
                for seq, delta_path in children[newest.seq]:
                    try:
                        delta = self.load(delta_path)
                        if delta.seq != seq or len(delta.shards) != len(base.shards):
                            raise ValueError("its name or its shards disagree with the chain")
                    except ValueError as e:
                        log.warning("delta %s is unusable (%s)", delta_path, e)
                        continue
                    base.deltas.append(delta.shards)
                    chain.delta_pipelines += delta.pipelines
                    chain.deltas += 1
                    newest = delta
                    break
                else:  # none usable: the log after the last usable one has the rest
                    break
            chain.last, chain.last_seq = newest.path, newest.seq
            self._chain = chain
            if newest is not base:
                base.seq, base.path, base.seen = newest.seq, newest.path, newest.seen
                base.alerts = newest.alerts if newest.alerts is not None else base.alerts
                base.pipelines += chain.delta_pipelines
            return base
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
            if version not in READS:
                raise ValueError(f"format version {version}; this build reads versions {READS}")
            shards: dict[int, storage_pb2.ShardSnapshot] = {}
            seen: list[tuple[str, list[str], float]] = []
            ids_header: tuple[int, ...] | None = None
            times = view[0:0]
            teams: list[str] = []
            parts: list[list[memoryview]] = [[] for _ in range(OVERFLOW + 1)]
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
                elif kind == SEEN and version == 1:
                    chunk = storage_pb2.SeenChunk.FromString(body)
                    if chunk.joined_ids:
                        ids = chunk.joined_ids.decode().split("\n")
                    else:
                        ids = list(chunk.execution_ids)
                    seen.append((LEGACY, [legacy_key(x) for x in ids], chunk.max_event_time))
                elif kind == IDS and version >= 2:
                    if ids_header is not None or length < IDS_HEADER.size:
                        raise ValueError(f"misplaced ids header at byte {offset}")
                    ids_header = IDS_HEADER.unpack_from(data, start)
                    times, teams = _chunk_meta(version, ids_header, view[start:stop], offset)
                elif kind == IDS_PART and version >= 2 and length >= 1 and data[start] <= OVERFLOW:
                    parts[data[start]].append(view[start + 1 : stop])
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
            remembered: Remembered | list[tuple[str, list[str], float]] = seen
            if ids_header is not None:
                image = _remembered(ids_header, times, parts, teams)
                count = len(image)
                remembered = image if version >= 3 else _legacy(image)
            elif version >= 2:
                raise ValueError("no execution ids")
            else:
                count = sum(len(ids) for _, ids, _ in seen)
            if count != end.execution_ids:
                raise ValueError("end frame disagrees with the execution ids")
            if (len(alerts.alerts) if alerts is not None else 0) != end.alerts:
                raise ValueError("end frame disagrees with the alerts")
            del body, times, parts  # the last views into the map, which closes with the block
        count = max(shards, default=-1) + 1
        ordered = [shards.get(i, storage_pb2.ShardSnapshot(index=i)) for i in range(count)]
        return LoadedSnapshot(seq, path, ordered, remembered, pipelines, alerts)

    @staticmethod
    def load_ids(path: Path) -> tuple[int, Remembered] | None:
        """Only the remembered execution ids of one snapshot file and the log position it
        covers, every frame of them checked, the rest skipped; None when the file holds them in
        another form or is not whole (for the replay prefetch, which only narrows a lookup with
        them: recovery still reads the whole file)."""
        try:
            with mapped(path) as data, memoryview(data) as view:
                if len(data) < HEADER.size:
                    return None
                magic, version, _, seq, crc = HEADER.unpack_from(data, 0)
                if magic != MAGIC or version < 3 or crc32c.crc32c(data[:24]) != crc:
                    return None
                teams: list[str] = []
                header: tuple[int, ...] | None = None
                times = view[0:0]
                parts: list[list[memoryview]] = [[] for _ in range(OVERFLOW + 1)]
                offset = HEADER.size
                while offset + FRAME.size <= len(data):
                    length, crc, kind = FRAME.unpack_from(data, offset)
                    start = offset + FRAME.size
                    stop = start + length
                    if stop > len(data):
                        return None
                    if kind in (IDS, IDS_PART):
                        first = crc32c.crc32c(bytes((kind,)))
                        if length < 1 or crc32c.crc32c(view[start:stop], first) != crc:
                            return None
                        if kind == IDS and header is None and length >= IDS_HEADER.size:
                            header = IDS_HEADER.unpack_from(data, start)
                            times, teams = _chunk_meta(version, header, view[start:stop], offset)
                        elif kind == IDS_PART and data[start] <= OVERFLOW:
                            parts[data[start]].append(view[start + 1 : stop])
                        else:
                            return None
                    elif kind == END:
                        break
                    offset = stop
                if header is None:
                    return None
                image = _remembered(header, times, parts, teams)
                del times, parts
                return seq, image
        except (OSError, ValueError):
            return None

    # -- writing ---------------------------------------------------------------------------------

    async def write(
        self,
        shards: ShardSet,
        seen: SeenExecutions,
        event_log: EventLog,
        alerts: Callable[[], storage_pb2.AlertsSnapshot] | None = None,
    ) -> Path:
        """Write a snapshot of the state as it is now, yielding to ingestion while it works.
        `alerts` dumps the alerting state; it is called at once, at the snapshot's position.
        A write that fails leaves no file behind; for want of space or of a working disk, it
        raises DiskError."""
        seq = event_log.last_seq
        chain, self._chain = self._chain, None  # until this one is written
        delta = chain is not None and (
            chain.deltas < MAX_DELTAS and chain.delta_pipelines < chain.base_pipelines
        )
        if delta and chain is not None and chain.last_seq == seq and chain.last.exists():
            self._chain = chain  # nothing was logged since: the newest file has it all
            return chain.last
        name = _delta_name(seq, chain.last_seq) if delta and chain else _snapshot_name(seq)
        tmp = self.directory / (name + ".tmp")
        before = shards.last_job
        try:
            path, job = await self._write(seq, shards, seen, event_log, alerts, name, delta)
        except BaseException as e:
            # What it held is changed again, and the files on disk are as they were: a delta
            # that failed (or a stop that cancelled it) costs the next one nothing more.
            begun = shards.last_job
            if begun is not None and begun is not before:
                shards.abandon_snapshot(begun)
                if not begun.full:
                    self._chain = chain
            # A half-written snapshot must not keep the space that the log needs next.
            with contextlib.suppress(OSError):
                await asyncio.shield(asyncio.to_thread(_remove, tmp))
            if isinstance(e, OSError) and is_disk_error(e):
                raise DiskError(e.filename or tmp, e, "no snapshot was written") from e
            raise
        if not job.full and chain is not None:
            chain.delta_pipelines += job.listed
            chain.deltas += 1
            chain.last, chain.last_seq = path, seq
            self._chain = chain
        else:
            self._chain = _Chain(job.listed, 0, 0, path, seq)
        return path

    def remove_temporary(self) -> int:
        """Delete the temporary files of snapshots that were never finished (at start, before
        anything writes one); returns how many there were."""
        if not self.directory.is_dir():
            return 0
        stale = list(self.directory.glob("*.tmp"))
        for path in stale:
            log.warning("removing %s, a snapshot that was never finished", path)
            _remove(path)
        return len(stale)

    async def _write(
        self,
        seq: int,
        shards: ShardSet,
        seen: SeenExecutions,
        event_log: EventLog,
        alerts: Callable[[], storage_pb2.AlertsSnapshot] | None,
        name: str,
        delta: bool,
    ) -> tuple[Path, SnapshotJob]:
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        alerting = alerts() if alerts is not None else None
        job = shards.begin_snapshot(full=not delta)
        if job.full and delta:  # the shards cannot make a delta (see ShardSet.full_next)
            name = _snapshot_name(seq)
        try:
            ids_builder = ImageBuilder(seen)
            await loop.run_in_executor(
                None, lambda: self.directory.mkdir(parents=True, exist_ok=True)
            )
            final = self.directory / name
            tmp = final.with_name(final.name + ".tmp")
            fd = await loop.run_in_executor(
                None, lambda: open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            )
            try:
                buffer = bytearray(_header(seq))
                for team_part in job.teams:
                    buffer += _frame(TEAMS, team_part.SerializeToString())
                if alerting is not None:
                    buffer += _frame(ALERTS, alerting.SerializeToString())
                pipelines = 0
                turn = time.perf_counter()
                for index, batch in job.chunks(CHUNK_PIPELINES):
                    buffer += _frame(PIPELINES, encode_shard_part(index, batch))
                    pipelines += len(batch)
                    if len(buffer) >= FLUSH_BYTES:
                        await loop.run_in_executor(None, _write_all, fd, bytes(buffer))
                        buffer.clear()
                        failpoints.hit("snapshot-mid-write")
                    if time.perf_counter() - turn >= SLICE_SECONDS:
                        await asyncio.sleep(0)  # let ingestion in between slices
                        turn = time.perf_counter()
                if buffer:
                    await loop.run_in_executor(None, _write_all, fd, bytes(buffer))
                    buffer.clear()
                for _ in ids_builder.steps():
                    if time.perf_counter() - turn >= SLICE_SECONDS:
                        await asyncio.sleep(0)  # let ingestion in between slices
                        turn = time.perf_counter()
                image = ids_builder.result
                for head, piece in _ids_frames(image):
                    await loop.run_in_executor(None, _write_pair, fd, head, piece)
                ids = len(image)
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
            "%s %s: %d pipelines, %d execution ids, %.1f MiB, %.2fs",
            "snapshot" if job.full else "delta snapshot",
            final.name,
            pipelines,
            ids,
            final.stat().st_size / 2**20,
            time.perf_counter() - began,
        )
        return final, job

    def prune(self) -> int | None:
        """Delete whole snapshots beyond the newest `keep`, and the deltas before the oldest
        kept; return the oldest kept one's seq."""
        paths = self.paths()
        for old in paths[self.keep :]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        for tmp in self.directory.glob("*.tmp"):
            _remove(tmp)
        kept = paths[: self.keep]
        oldest = int(kept[-1].stem) if kept else None
        for seq, _, path in self.deltas():
            if oldest is None or seq <= oldest:
                _remove(path)
        return oldest


def _chunk_meta(
    version: int, header: tuple[int, ...], body: memoryview, offset: int
) -> tuple[memoryview, list[str]]:
    """Of the ids' header frame's body: the chunks' ends and times (a view), and the chunks'
    teams (all LEGACY before version 3)."""
    chunks = header[1]
    at = IDS_HEADER.size + 16 * chunks
    if len(body) < at or (version < 3 and len(body) != at):
        raise ValueError(f"ids header of the wrong size at byte {offset}")
    meta = body[IDS_HEADER.size : at]
    if version < 3:
        return meta, [LEGACY] * chunks
    index = array("I", bytes(body[at : at + 4 * chunks]))
    if len(index) != chunks:
        raise ValueError(f"ids header of the wrong size at byte {offset}")
    if bool(header[5]) != (sys.byteorder == "little"):
        index.byteswap()
    at += 4 * chunks
    names: list[str] = []
    try:
        (count,) = NAME.unpack_from(body, at)
        at += NAME.size
        for _ in range(count):
            (size,) = NAME.unpack_from(body, at)
            at += NAME.size
            if at + size > len(body):
                raise ValueError(f"a team's name cut off at byte {offset}")
            names.append(bytes(body[at : at + size]).decode())
            at += size
    except (struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"ids header of the wrong size at byte {offset}") from e
    if at != len(body) or any(i >= len(names) for i in index):
        raise ValueError(f"ids header of the wrong size at byte {offset}")
    return meta, [names[i] for i in index]


def _legacy(image: Remembered) -> list[tuple[str, list[str], float]]:
    """A version 2 file's bare ids as chunks of legacy keys (read once, on the first start of a
    newer build: the next snapshot writes them in the compact form again)."""
    out: list[tuple[str, list[str], float]] = []
    start = 0
    for end, t in zip(image.ends, image.times, strict=True):
        out.append((LEGACY, [legacy_key(image.entry(i)) for i in range(start, end)], t))
        start = end
    return out


def _remembered(
    header: tuple[int, ...], meta: memoryview, parts: list[list[memoryview]], teams: list[str]
) -> Remembered:
    """The compact form of the ids from a snapshot's frames (copied out of the map)."""
    count, chunks, slots, overflow, item, little = header
    swap = bool(little) != (sys.byteorder == "little")

    def part(which: int, typecode: str) -> array[int]:
        out = array(typecode)
        for piece in parts[which]:
            out.frombytes(piece)
        if swap:
            out.byteswap()
        return out

    ends = array("Q", bytes(meta[: 8 * chunks]))
    times = array("d", bytes(meta[8 * chunks :]))
    if swap:
        ends.byteswap()
        times.byteswap()
    if item not in (4, 8):
        raise ValueError(f"an id table of {item}-byte slots")
    table = part(TABLE, "I" if item == 4 else "Q")
    if len(table) != slots:
        raise ValueError(f"an id table of {len(table)} slots; the header says {slots}")
    blob = b"".join(parts[BLOB])
    image = Remembered(
        blob, part(STARTS, "Q"), part(HASHES, "I"), table, {}, ends.tolist(), times.tolist(), teams
    )
    if len(image) != count:
        raise ValueError(f"{len(image)} ids; the header says {count}")
    entries = part(OVERFLOW, "Q")
    if len(entries) != overflow:
        raise ValueError(f"{len(entries)} overflow ids; the header says {overflow}")
    image.check()
    image.overflow.update((image.entry(i), i) for i in entries)
    return image


def _ids_frames(image: Remembered) -> Iterator[tuple[bytes, memoryview]]:
    """The frames of the ids' compact form, each as its head and a view of the rest (not
    copied): the header frame, then the parts in pieces of at most PART_BYTES."""
    ends = array("Q", image.ends).tobytes()
    times = array("d", image.times).tobytes()
    header = IDS_HEADER.pack(
        len(image),
        len(image.ends),
        len(image.table),
        len(image.overflow),
        image.table.itemsize,
        sys.byteorder == "little",
    )
    names: dict[str, int] = {}
    index = array("I", [names.setdefault(team, len(names)) for team in image.teams]).tobytes()
    named = bytearray(NAME.pack(len(names)))
    for name in names:
        encoded = name.encode()
        named += NAME.pack(len(encoded)) + encoded
    yield _frame(IDS, header + ends + times + index + bytes(named)), memoryview(b"")
    overflow = array("Q", sorted(image.overflow.values()))
    parts: list[tuple[int, bytes | array[int]]] = [
        (BLOB, image.blob),
        (STARTS, image.starts),
        (HASHES, image.hashes),
        (TABLE, image.table),
        (OVERFLOW, overflow),
    ]
    for which, data in parts:
        raw = memoryview(data).cast("B")
        for at in range(0, len(raw), PART_BYTES):
            piece = raw[at : at + PART_BYTES]
            tag = bytes((which,))
            crc = crc32c.crc32c(piece, crc32c.crc32c(tag, crc32c.crc32c(bytes((IDS_PART,)))))
            yield FRAME.pack(len(piece) + 1, crc, IDS_PART) + tag, piece


def _write_pair(fd: int, head: bytes, rest: memoryview) -> None:
    _write_all(fd, head)
    _write_all(fd, rest)
