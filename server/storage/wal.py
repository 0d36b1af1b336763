"""The write-ahead log: segmented, checksummed, group-committed.

Layout under `<data-dir>/wal/`: segments named by the sequence number of their first record,
`00000000000000000001.seg`. A segment starts with a 32-byte header (magic, format version, first
sequence number, CRC-32C of the header) and holds records back to back. A record is one
group-commit batch, all-or-nothing:

    length u32 | crc u32 | first_seq u64 | count u32 | count x (entry_length u32 | entry)

`crc` is the CRC-32C of everything after it (first_seq, count and the entries); sequence numbers
run on without a gap from record to record and segment to segment.

Group commit: `append` queues an entry and returns its number at once; one writer task takes
everything queued, writes it as one record and, under `fsync: always`, calls `fdatasync` once,
off the event loop; then every waiter up to that number is released. A write or fsync error fails
every waiter and the log refuses all further work: nothing that may not be on disk is
acknowledged.

Recovery: a torn tail of the newest segment (damage that runs to the end of the file, as a crash
in the middle of a write leaves it) is cut at the last whole record, with a warning saying how
much was cut. Damage that a crash cannot leave stops the start, with an error naming the file,
the byte and what `repair` would drop: a bad record followed by a whole one (found by scanning
past the damage for a record that frames and checksums), a segment header that is torn or
damaged (a segment is named only once its header is synced, so a crash never leaves one), or
any damage in an older segment. `repair` cuts the log there and drops the segments after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import crc32c

from pipewarden.server.base import failpoints, metrics, tasks
from pipewarden.server.base.errors import CorruptLogError, DiskError, LogError, is_disk_error
from pipewarden.server.storage.descriptors import open_file
from pipewarden.server.storage.files import fsync_dir, truncate, write_all
from pipewarden.server.storage.readonly import Buffer, mapped

__all__ = [
    "FSYNC_POLICIES",
    "FileIO",
    "OsFileIO",
    "RecoveryReport",
    "WriteAheadLog",
    "read_entries",
    "segments_after",
]

log = logging.getLogger(__name__)

MAGIC = b"PWWAL\x00\r\n"
VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sIIQI4x")  # magic, version, reserved, first_seq, crc, pad
RECORD_HEADER = struct.Struct("<IIQI")  # length, crc, first_seq, count
ENTRY = struct.Struct("<I")
MAX_RECORD_BYTES = 1 << 30
FSYNC_POLICIES = ("always", "interval", "off")
REPLAY_BATCH = 4096
"""Entries handed over at once by `replay`: a log across the network fetches in batches, and an
await per entry would cost a restart a second per million."""
_NONZERO = re.compile(b"[^\x00]")


class FileIO(Protocol):
    """The two file operations the log's writer uses; tests inject faulty ones."""

    def write(self, fd: int, data: memoryview) -> int:
        """Write some of `data`; return how many bytes were written."""
        ...

    def fsync(self, fd: int) -> None:
        """Make what was written durable."""
        ...


class OsFileIO:
    """The real thing."""

    def write(self, fd: int, data: memoryview) -> int:
        """os.write."""
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        """os.fdatasync."""
        os.fdatasync(fd)


@dataclass
class Segment:
    """One segment file and the sequence numbers it holds."""

    path: Path
    first_seq: int
    last_seq: int
    """first_seq - 1 while empty."""
    size: int


@dataclass
class RecoveryReport:
    """What opening the log found."""

    segments: int = 0
    records: int = 0
    last_seq: int = 0
    cut_bytes: int = 0
    """Bytes cut from a torn or corrupt tail (or, with repair, from the corrupt point on)."""
    dropped_segments: int = 0
    """Segments deleted by repair."""


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def _segment_header(first_seq: int) -> bytes:
    head = SEGMENT_HEADER.pack(MAGIC, VERSION, 0, first_seq, 0)
    crc = crc32c.crc32c(head[:24])
    return SEGMENT_HEADER.pack(MAGIC, VERSION, 0, first_seq, crc)


def frame(first_seq: int, entries: list[bytes]) -> bytes:
    """One record holding `entries`, numbered from `first_seq`."""
    parts: list[bytes] = [b"", struct.pack("<QI", first_seq, len(entries))]
    pack = ENTRY.pack
    for entry in entries:
        parts.append(pack(len(entry)))
        parts.append(entry)
    body = b"".join(parts)
    return struct.pack("<II", len(body) - 12, crc32c.crc32c(body)) + body


@dataclass
class _Scan:
    records: list[tuple[int, list[bytes]]]
    good_end: int
    last_seq: int
    error: str | None


def _scan(data: Buffer, first_seq: int, keep_after: int | None) -> _Scan:
    """Parse the records of a segment's bytes (header included). Entries of records are kept
    only when `keep_after` is not None, and only those numbered above it."""
    records: list[tuple[int, list[bytes]]] = []
    offset = SEGMENT_HEADER.size
    expected = first_seq
    size = len(data)
    view = memoryview(data)
    while offset < size:
        if size - offset < RECORD_HEADER.size:
            return _Scan(records, offset, expected - 1, f"torn record header at byte {offset}")
        length, crc, seq, count = RECORD_HEADER.unpack_from(data, offset)
        end = offset + RECORD_HEADER.size + length
        if length > MAX_RECORD_BYTES or end > size:
            return _Scan(records, offset, expected - 1, f"torn record at byte {offset}")
        if crc32c.crc32c(view[offset + 8 : end]) != crc:
            return _Scan(records, offset, expected - 1, f"checksum mismatch at byte {offset}")
        if seq != expected:
            return _Scan(
                records,
                offset,
                expected - 1,
                f"record at byte {offset} has sequence {seq}, expected {expected}",
            )
        pos = offset + RECORD_HEADER.size
        entries: list[bytes] = []
        keep = keep_after is not None and seq + count - 1 > keep_after
        for i in range(count):
            if pos + 4 > end:
                return _Scan(records, offset, expected - 1, f"malformed record at byte {offset}")
            (n,) = ENTRY.unpack_from(data, pos)
            pos += 4
            if pos + n > end:
                return _Scan(records, offset, expected - 1, f"malformed record at byte {offset}")
            if keep and seq + i > (keep_after or 0):
                entries.append(data[pos : pos + n])
            pos += n
        if pos != end:
            return _Scan(records, offset, expected - 1, f"malformed record at byte {offset}")
        if keep:
            records.append((seq, entries))
        expected = seq + count
        offset = end
    return _Scan(records, offset, expected - 1, None)


def _whole_record_at(
    data: Buffer, offset: int, lowest: int, highest: int
) -> tuple[int, int] | None:
    """(its end, its entry count) when a record that frames and checksums starts at `offset`,
    numbered from `lowest` to `highest`; else None."""
    size = len(data)
    if size - offset < RECORD_HEADER.size:
        return None
    length, crc, seq, count = RECORD_HEADER.unpack_from(data, offset)
    end = offset + RECORD_HEADER.size + length
    if not lowest <= seq <= highest or count < 1 or 4 * count > length or end > size:
        return None
    if crc32c.crc32c(memoryview(data)[offset + 8 : end]) != crc:
        return None
    pos = offset + RECORD_HEADER.size
    for _ in range(count):
        if pos + 4 > end:
            return None
        pos += 4 + ENTRY.unpack_from(data, pos)[0]
    return (end, count) if pos == end else None


@dataclass
class _Damage:
    """What follows a bad record: the whole records found past it."""

    offset: int
    """Where the first of them starts."""
    records: int
    entries: int


def _past_damage(data: Buffer, good_end: int, expected: int) -> _Damage | None:
    """The whole records after the bad one at `good_end` (whose first entry would have been
    number `expected`), or None when there are none: then the damage runs to the end of the file,
    as a crash leaves it, and is a torn tail.

    Every later byte offset is a candidate, but only where the record's sequence number could be:
    at least `expected`, and at most one more per 4 bytes skipped (an entry takes at least that).
    The candidates are found with `find` on the high bytes all those numbers share, so that the
    torn tail of a large record is scanned at the speed of memchr rather than of Python."""
    size = len(data)
    low = struct.pack("<Q", expected)
    high = struct.pack("<Q", expected + size // 4)
    shared = 0
    while shared < 8 and low[7 - shared] == high[7 - shared]:
        shared += 1
    needle = low[8 - shared :]  # the high bytes, little-endian: the sequence number's last ones
    before = 16 - shared  # from a record's start to those bytes
    offset = good_end + 1
    while True:
        if needle:
            hit = data.find(needle, offset + before)
            if hit < 0:
                return None
            offset = hit - before
        if offset + RECORD_HEADER.size > size:
            return None
        found = _whole_record_at(data, offset, expected, expected + (offset - good_end) // 4)
        if found is not None:
            break
        # A record's count (its bytes 16 to 19) is not 0: skip a run of zeros (a preallocated
        # tail) at the speed of a regular expression too.
        nonzero = _NONZERO.search(data, offset + 16)
        if nonzero is None:
            return None
        offset = max(offset + 1, nonzero.start() - 19)
    damage = _Damage(offset, 1, found[1])
    end = found[0]
    while size - end >= RECORD_HEADER.size:  # and the whole records that follow on from it
        seq = RECORD_HEADER.unpack_from(data, end)[2]
        more = _whole_record_at(data, end, seq, seq)
        if more is None:
            break
        damage.records += 1
        damage.entries += more[1]
        end = more[0]
    return damage


def _read_header(data: bytes, path: Path) -> int | str:
    """The first sequence number from a segment's header, or what is wrong with it."""
    if len(data) < SEGMENT_HEADER.size:
        return "segment header is torn"
    magic, version, _, first_seq, crc = SEGMENT_HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        return "not a Pipewarden log segment (bad magic)"
    if crc32c.crc32c(data[:24]) != crc:
        return "segment header checksum mismatch"
    if version != VERSION:
        return f"segment format version {version}; this build reads version {VERSION}"
    if path.name != _segment_name(first_seq):
        return f"segment header says it starts at {first_seq}, unlike its name"
    return int(first_seq)


def _segment_paths(directory: Path) -> list[Path]:
    """The segment files of `directory`, oldest first, by their names."""
    return sorted(
        (p for p in directory.glob("*.seg") if p.stem.isdigit()), key=lambda p: int(p.stem)
    )


def _entries(scan: _Scan, after: int) -> Iterator[tuple[int, bytes]]:
    """The entries a scan kept (those above `after`), each with its number."""
    for first, entries in scan.records:
        start = max(first, after + 1)
        for i, entry in enumerate(entries):
            yield start + i, entry


def segments_after(directory: Path, after: int) -> list[Path]:
    """The segment files of `directory` that may hold entries numbered above `after`, oldest
    first, by their names alone (nothing is read or checked)."""
    paths = _segment_paths(directory)
    keep = [p for p, nxt in itertools.pairwise(paths) if int(nxt.stem) > after + 1]
    return keep + paths[-1:]


def read_entries(directory: Path, after: int) -> Iterator[tuple[int, bytes]]:
    """The entries numbered above `after`, read-only and without the checks across segments
    that opening a log makes; stops quietly at the first damage. For a reader beside the log's
    owner (the replay prefetch), which trusts only what the owner confirms."""
    for path in segments_after(directory, after):
        try:
            data = path.read_bytes()
        except OSError:
            return
        first = _read_header(data, path)
        if isinstance(first, str):
            return
        scan = _scan(data, first, after)
        yield from _entries(scan, after)
        if scan.error is not None:
            return


class WriteAheadLog:
    """The event log on disk. See the module docstring for the format and the guarantees."""

    def __init__(
        self,
        directory: str | Path,
        *,
        fsync: str = "always",
        fsync_interval: float = 0.1,
        segment_bytes: int = 64 * 1024 * 1024,
        repair: bool = False,
        io: FileIO | None = None,
        on_failure: Callable[[LogError], None] | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        self.directory = Path(directory)
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes
        self.repair = repair
        self.io: FileIO = io or OsFileIO()
        self.on_failure = on_failure
        self.report = RecoveryReport()
        self.segments: list[Segment] = []
        self._fd = -1
        self._last = 0  # appended
        self._written = 0  # written (and synced, under fsync: always)
        self._pending: list[bytes] = []
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._error: LogError | None = None
        self._dirty = False
        self._closing = False
        self._closed = False
        self._opened = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pipewarden-wal")
        self._writer: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None

    # -- the EventLog interface ------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The number of the last appended entry."""
        return self._last

    @property
    def durable_seq(self) -> int:
        """The number of the last entry the policy counts as durable."""
        return self._written

    async def open(self) -> None:
        """Recover the directory (cutting a torn tail) and start the writer."""
        if self._opened:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._recover)
        except OSError as e:
            if is_disk_error(e):
                raise DiskError(e.filename or self.directory, e, "the log cannot be opened") from e
            raise
        self._opened = True
        self._writer = tasks.spawn(self._write_loop(), name="wal-writer")
        if self.fsync == "interval":
            self._syncer = tasks.spawn(self._sync_loop(), name="wal-syncer")

    def append(self, payload: bytes) -> int:
        """Queue an entry; it is durable once `wait_durable` for its number returns."""
        if self._error is not None:
            raise self._error
        if self._closing:
            raise LogError("the write-ahead log is closed")
        self._pending.append(payload)
        self._last += 1
        self._wake.set()
        return self._last

    async def wait_durable(self, seq: int) -> None:
        """Return once entries up to `seq` are written (and synced, under fsync: always)."""
        if seq <= self._written:
            return
        if self._error is not None:
            raise self._error
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        await future

    async def replay(self, after: int) -> AsyncIterator[list[tuple[int, bytes]]]:
        """Entries numbered above `after`, in order, from the recovered segments, in batches
        (the EventLog seam; see `read` for the plain iterator)."""
        batch: list[tuple[int, bytes]] = []
        for entry in self.read(after):
            batch.append(entry)
            if len(batch) >= REPLAY_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def read(self, after: int) -> Iterator[tuple[int, bytes]]:
        """Entries numbered above `after`, in order, from the recovered segments."""
        for segment in list(self.segments):
            if segment.last_seq <= after:
                continue
            # The log is not written until replay ends, so nothing cuts the file under the map.
            with mapped(segment.path, segment.size) as data:
                scan = _scan(data, segment.first_seq, after)
            yield from _entries(scan, after)

    async def close(self) -> None:
        """Write and sync what is queued, then release the files. Idempotent."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            # It ends once the queue is written; one that died was reported when it died.
            await asyncio.wait({self._writer})
        await tasks.stop(self._syncer)
        loop = asyncio.get_running_loop()
        if self._fd >= 0:
            if self._error is None:
                with contextlib.suppress(OSError):
                    await loop.run_in_executor(self._executor, self._fsync, self._fd)
            os.close(self._fd)
            self._fd = -1
        self._closed = True
        self._executor.shutdown(wait=True)

    # -- maintenance -----------------------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        """The number of the first entry the log still holds (last_seq + 1 when empty)."""
        return self.segments[0].first_seq if self.segments else self._last + 1

    def start_after(self, seq: int) -> None:
        """Make the next entry number at least `seq + 1` (a snapshot may be ahead of a log that
        lost an unacknowledged tail). Only before anything is appended."""
        if seq > self._last:
            assert not self._pending
            self._last = self._written = seq
            self._new_segment(seq + 1)

    async def truncate_before(self, seq: int) -> int:
        """Delete the segments whose entries are all numbered `seq` or less, except the one being
        written. Returns how many were deleted."""
        doomed = [s for s in self.segments[:-1] if s.last_seq <= seq]
        if not doomed:
            return 0
        failpoints.hit("wal-before-truncate")

        def delete() -> None:
            for s in doomed:
                with contextlib.suppress(FileNotFoundError):
                    s.path.unlink()
            fsync_dir(self.directory)

        await asyncio.get_running_loop().run_in_executor(self._executor, delete)
        self.segments = [s for s in self.segments if s not in doomed]
        return len(doomed)

    def size_bytes(self) -> int:
        """Bytes in all segments."""
        return sum(s.size for s in self.segments)

    # -- recovery --------------------------------------------------------------------------------

    def _recover(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for tmp in self.directory.glob("*.tmp"):  # a segment whose creation a crash cut short
            tmp.unlink()
        paths = _segment_paths(self.directory)
        report = self.report
        expected: int | None = None
        segments: list[Segment] = []
        floor = 1  # the first number the next new segment may use
        for i, path in enumerate(paths):
            newest = i == len(paths) - 1
            data = path.read_bytes()
            first = _read_header(data, path)
            if isinstance(first, str):
                # Never a crash's doing: a segment gets its name only once its header is synced.
                self._corrupt(path, f"{first} (at byte 0)", paths[i + 1 :], 0, len(data))
                floor = max(floor, int(path.stem))
                break
            if expected is not None and first != expected:
                self._corrupt(
                    path,
                    f"starts at {first} but the previous segment ends at {expected - 1}",
                    paths[i + 1 :],
                    0,
                    len(data),
                )
                floor = max(floor, first)
                break
            scan = _scan(data, first, None)
            if scan.error is not None:
                cut = len(data) - scan.good_end
                after = _past_damage(data, scan.good_end, scan.last_seq + 1) if newest else None
                if newest and after is None:
                    log.warning(
                        "%s: %s; a torn tail: cutting it (%d bytes) and keeping %d entries "
                        "before it",
                        path,
                        scan.error,
                        cut,
                        scan.last_seq - first + 1,
                    )
                    truncate(path, scan.good_end)
                    report.cut_bytes += cut
                else:
                    problem = scan.error
                    if after is not None:
                        problem += (
                            f", followed by {after.records} whole record(s) of {after.entries} "
                            f"entries from byte {after.offset} on: not a torn tail"
                        )
                    self._corrupt(path, problem, paths[i + 1 :], scan.good_end, len(data))
                    segments.append(Segment(path, first, scan.last_seq, scan.good_end))
                    break
            segments.append(Segment(path, first, scan.last_seq, scan.good_end))
            expected = scan.last_seq + 1
        self.segments = segments
        report.segments = len(segments)
        last = segments[-1].last_seq if segments else 0
        report.last_seq = last
        self._last = self._written = last
        if segments:
            active = segments[-1]
            self._fd = os.open(active.path, os.O_WRONLY | os.O_APPEND)
        else:
            self._last = self._written = floor - 1
            self._new_segment(floor)

    def _corrupt(
        self, path: Path, problem: str, later: list[Path], good_end: int, size: int
    ) -> None:
        """Damage a crash cannot leave, at `good_end` of `path`: stop the start, or with `repair`
        cut the log there and delete the `later` segments."""
        later_bytes = sum(p.stat().st_size for p in later)
        drops = f"{size - good_end} bytes of this segment from byte {good_end} on"
        if later:
            drops += f" and the {len(later)} later segment(s) ({later_bytes} bytes)"
        if not self.repair:
            raise CorruptLogError(
                f"{path}: {problem}. The write-ahead log is damaged where a crash cannot have "
                "left it, so entries after this point cannot be trusted and nothing was changed. "
                f"Start with --repair to cut the log here, dropping {drops}; keep a copy of the "
                "data directory first."
            )
        log.warning("%s: %s; --repair: cutting the log here, dropping %s", path, problem, drops)
        self.report.cut_bytes += size - good_end + later_bytes
        self.report.dropped_segments += len(later)
        for p in later:
            p.unlink()
        if good_end < SEGMENT_HEADER.size:
            path.unlink()
        else:
            truncate(path, good_end)

    def _new_segment(self, first_seq: int) -> None:
        """Create and switch to a new segment (in the writer thread or during recovery)."""
        path = self.directory / _segment_name(first_seq)
        tmp = path.with_suffix(".tmp")
        try:
            fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, _segment_header(first_seq), self.io.write)
                os.fsync(fd)
            finally:
                os.close(fd)
            failpoints.hit("wal-mid-rotate")
            os.rename(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            e.filename = e.filename or str(tmp)
            raise
        fsync_dir(self.directory)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = open_file(path, os.O_WRONLY | os.O_APPEND)
        self.segments.append(Segment(path, first_seq, first_seq - 1, SEGMENT_HEADER.size))

    # -- writing ---------------------------------------------------------------------------------

    def _fsync(self, fd: int) -> None:
        """In the writer thread: fdatasync, timed for /metrics."""
        began = time.perf_counter()
        self.io.fsync(fd)
        metrics.LOG_FSYNC_SECONDS.observe(time.perf_counter() - began)

    def _write_batch(self, data: bytes, first_seq: int, rotate: bool) -> None:
        """In the writer thread: rotate if due, write one record, sync per policy."""
        if rotate:
            if self.fsync != "off":
                self._fsync(self._fd)
            self._new_segment(first_seq)
        failpoints.hit("wal-before-write")
        write_all(self._fd, data, self.io.write)
        failpoints.hit("wal-after-write")
        if self.fsync == "always":
            self._fsync(self._fd)
        failpoints.hit("wal-after-fsync")

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                if self._closing:
                    return
                continue
            batch, self._pending = self._pending, []
            first = self._written + 1
            data = frame(first, batch)
            active = self.segments[-1]
            rotate = (
                active.size > SEGMENT_HEADER.size and active.size + len(data) > self.segment_bytes
            )
            try:
                await loop.run_in_executor(self._executor, self._write_batch, data, first, rotate)
            except OSError as e:
                self._fail(e, first)
                return
            active = self.segments[-1]
            active.size += len(data)
            active.last_seq = first + len(batch) - 1
            self._written = active.last_seq
            self._dirty = True
            waiters = self._waiters
            while waiters and waiters[0][0] <= self._written:
                _, future = waiters.popleft()
                if not future.done():
                    future.set_result(None)
            # A close that came while this batch was taken found the wake-up already set and
            # consumed by the clear above: look again, or the writer would wait for ever.
            if self._pending or self._closing:
                self._wake.set()

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.fsync_interval)
            if self._dirty and self._error is None and self._fd >= 0:
                self._dirty = False
                try:
                    await loop.run_in_executor(self._executor, self._fsync, self._fd)
                except OSError as e:
                    self._fail(e, self._written + 1)
                    return

    def _fail(self, cause: OSError, first_unsure: int) -> None:
        consequence = f"entries from {first_unsure} on were not acknowledged"
        error: LogError
        if is_disk_error(cause):
            where = cause.filename or (self.segments[-1].path if self.segments else self.directory)
            error = DiskError(where, cause, consequence)
        else:
            error = LogError(
                f"the write-ahead log cannot write to {self.directory}: {cause}; {consequence}"
            )
        self._error = error
        if self.on_failure is None:  # else the owner says it, once
            log.error("%s", error)
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(error)
        if self.on_failure is not None:
            self.on_failure(error)
