"""The write-ahead log against real files: group commit, rotation, and a corruption table in the
style of Prometheus' TestWALRepair, where each case says exactly which entries survive."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipewarden.server.base.errors import CorruptLogError, LogError
from pipewarden.server.storage.wal import SEGMENT_HEADER, WriteAheadLog
from tests.support.logfiles import FaultyIO, flip, record_offsets


def entry(i: int) -> bytes:
    return f"entry-{i:04d}-".encode() * 3


async def build(directory: Path, batches: list[int], segment_bytes: int = 1 << 20) -> None:
    """A log whose records hold `batches[k]` entries each, written one record at a time."""
    wal = WriteAheadLog(directory, segment_bytes=segment_bytes)
    await wal.open()
    n = 0
    for size in batches:
        seqs = [wal.append(entry(n + k)) for k in range(size)]
        n += size
        await wal.wait_durable(seqs[-1])
    await wal.close()


async def survivors(directory: Path, repair: bool = False) -> list[bytes]:
    wal = WriteAheadLog(directory, repair=repair)
    await wal.open()
    try:
        got = list(wal.read(0))
        assert [seq for seq, _ in got] == list(range(1, len(got) + 1))
        # The log goes on from where it was cut.
        seq = wal.append(b"after")
        assert seq == len(got) + 1
        await wal.wait_durable(seq)
        return [payload for _, payload in got]
    finally:
        await wal.close()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


async def test_group_commit_shares_writes_among_concurrent_appends(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    await wal.open()
    seqs = [wal.append(entry(i)) for i in range(200)]
    await asyncio.gather(*(wal.wait_durable(s) for s in seqs))
    await wal.close()
    assert seqs == list(range(1, 201))
    # 200 entries appended without yielding go out as one record.
    assert len(record_offsets(segments(tmp_path)[0])) == 1
    assert await survivors(tmp_path) == [entry(i) for i in range(200)]


async def test_rotation_replay_and_truncation(tmp_path: Path) -> None:
    await build(tmp_path, [3] * 40, segment_bytes=1024)
    files = segments(tmp_path)
    assert len(files) > 3
    assert [int(p.stem) for p in files] == sorted(int(p.stem) for p in files)
    wal = WriteAheadLog(tmp_path)
    await wal.open()
    assert [p for _, p in wal.read(0)] == [entry(i) for i in range(120)]
    assert [s for s, _ in wal.read(100)] == list(range(101, 121))
    second_last = wal.segments[-2].last_seq
    dropped = await wal.truncate_before(second_last)
    assert dropped == len(files) - 1
    assert wal.first_seq == second_last + 1
    assert [s for s, _ in wal.read(0)] == list(range(second_last + 1, 121))
    await wal.close()


LAST_RECORD_ENTRIES = 3
BATCHES = [2, 2, 2, LAST_RECORD_ENTRIES]  # 9 entries, 4 records, one segment
ALL = [entry(i) for i in range(9)]
BUT_LAST = ALL[: 9 - LAST_RECORD_ENTRIES]


def _truncate_to(offset_of: Callable[[Path], int]) -> Callable[[Path], None]:
    def corrupt(d: Path) -> None:
        seg = segments(d)[-1]
        os.truncate(seg, offset_of(seg))

    return corrupt


def _flip_at(offset_of: Callable[[Path], int]) -> Callable[[Path], None]:
    def corrupt(d: Path) -> None:
        seg = segments(d)[-1]
        flip(seg, offset_of(seg))

    return corrupt


def _append(data: bytes) -> Callable[[Path], None]:
    def corrupt(d: Path) -> None:
        with segments(d)[-1].open("ab") as f:
            f.write(data)

    return corrupt


def last(seg: Path) -> int:
    return record_offsets(seg)[-1]


CASES: list[tuple[str, Callable[[Path], None], list[bytes]]] = [
    ("torn record header", _truncate_to(lambda s: last(s) + 5), BUT_LAST),
    ("torn payload", _truncate_to(lambda s: s.stat().st_size - 1), BUT_LAST),
    ("bit flip in length", _flip_at(lambda s: last(s) + 1), BUT_LAST),
    ("bit flip in checksum", _flip_at(lambda s: last(s) + 5), BUT_LAST),
    ("bit flip in sequence number", _flip_at(lambda s: last(s) + 8), BUT_LAST),
    ("bit flip in payload", _flip_at(lambda s: last(s) + 30), BUT_LAST),
    ("garbage appended", _append(b"\x07garbage that is not a record at all"), ALL),
    ("zero-filled tail", _append(b"\x00" * 4096), ALL),
]


@pytest.mark.parametrize(("name", "corrupt", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_a_torn_tail_of_the_newest_segment_is_cut_at_the_last_whole_record(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    corrupt: Callable[[Path], None],
    expected: list[bytes],
) -> None:
    await build(tmp_path, BATCHES)
    corrupt(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert await survivors(tmp_path) == expected
    assert "cutting" in caplog.text


def _empty_newest(d: Path) -> None:
    """A second segment, cut to nothing (or to part of its header) after it took records."""
    seg = segments(d)[-1]
    os.truncate(seg, 0)


def _torn_newest_header(d: Path) -> None:
    os.truncate(segments(d)[-1], SEGMENT_HEADER.size // 2)


# Damage that a crash cannot leave: each case names where the start must stop (the byte of the
# newest segment), and what survives a start with --repair. The log has two segments: ROTATED
# holds records of 2, 2, 2 entries and rotation put the next records in the second one.
ROTATED = [2, 2, 2, 2, 2, 2]
FIRST_SEGMENT = 3 * 2  # entries in the first segment (with segment_bytes=330)


def _in_newest(offset_of: Callable[[Path], int]) -> Callable[[Path], int]:
    return lambda d: offset_of(segments(d)[-1])


REFUSED: list[tuple[str, Callable[[Path], None], Callable[[Path], int], int, str]] = [
    (
        "bit flip in the payload of a record followed by whole ones",
        _flip_at(lambda s: record_offsets(s)[0] + 30),
        _in_newest(lambda s: record_offsets(s)[0]),
        FIRST_SEGMENT,
        "followed by 2 whole record(s) of 4 entries",
    ),
    (
        "bit flip in the length of a record followed by whole ones",
        _flip_at(lambda s: record_offsets(s)[1] + 1),
        _in_newest(lambda s: record_offsets(s)[1]),
        FIRST_SEGMENT + 2,
        "followed by 1 whole record(s) of 2 entries",
    ),
    ("bit flip in the segment header", _flip_at(lambda s: 10), lambda d: 0, FIRST_SEGMENT, ""),
    ("newest segment cut to nothing", _empty_newest, lambda d: 0, FIRST_SEGMENT, "torn"),
    ("newest segment's header torn", _torn_newest_header, lambda d: 0, FIRST_SEGMENT, "torn"),
]


@pytest.mark.parametrize(
    ("name", "corrupt", "at", "kept", "says"), REFUSED, ids=[c[0] for c in REFUSED]
)
async def test_damage_a_crash_cannot_leave_in_the_newest_segment_stops_the_start(
    tmp_path: Path,
    name: str,
    corrupt: Callable[[Path], None],
    at: Callable[[Path], int],
    kept: int,
    says: str,
) -> None:
    await build(tmp_path, ROTATED, segment_bytes=330)
    files = segments(tmp_path)
    assert len(files) == 2 and int(files[1].stem) == FIRST_SEGMENT + 1
    corrupt(tmp_path)
    newest = files[-1]
    offset, size = at(tmp_path), newest.stat().st_size
    before = {p: p.read_bytes() for p in files}
    with pytest.raises(CorruptLogError) as info:
        await WriteAheadLog(tmp_path).open()
    message = str(info.value)
    assert str(newest) in message and f"byte {offset}" in message and says in message
    assert f"--repair to cut the log here, dropping {size - offset} bytes" in message
    assert "later segment" not in message  # there is none after the newest
    assert {p: p.read_bytes() for p in segments(tmp_path)} == before  # refusing changes nothing
    # --repair drops what the message said, and the log goes on from there.
    assert await survivors(tmp_path, repair=True) == [entry(i) for i in range(kept)]


async def test_a_crash_while_creating_a_segment_is_a_torn_tail(tmp_path: Path) -> None:
    """A segment is named only once its header is synced: a crash before that leaves a partial
    temporary file, which the start removes."""
    await build(tmp_path, BATCHES)
    partial = tmp_path / f"{10:020d}.tmp"
    partial.write_bytes(SEGMENT_HEADER.pack(b"PWWAL\x00\r\n", 1, 0, 10, 0)[:11])
    assert await survivors(tmp_path) == ALL
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


async def test_a_torn_tail_of_a_large_record_is_scanned_quickly(tmp_path: Path) -> None:
    """Telling a torn tail from damage followed by whole records scans every byte after the
    damage: a torn 8 MiB record, and 16 MiB of zeros after it, must not take long."""
    wal = WriteAheadLog(tmp_path)
    await wal.open()
    await wal.wait_durable(wal.append(b"small"))
    seqs = [wal.append(bytes([i % 251]) * 1000 + b"\x00" * 24) for i in range(8000)]
    await wal.wait_durable(seqs[-1])
    await wal.close()
    seg = segments(tmp_path)[0]
    os.truncate(seg, seg.stat().st_size - 100)
    with seg.open("ab") as f:  # and blocks of zeros after it, as a filesystem may leave
        f.write(b"\0" * (16 << 20))
    began = time.perf_counter()
    assert len(await survivors(tmp_path)) == 1
    assert time.perf_counter() - began < 5


async def test_truncation_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    await build(tmp_path / "whole", BATCHES)
    seg = segments(tmp_path / "whole")[0]
    data = seg.read_bytes()
    start = last(seg)
    for cut in range(start, len(data)):
        case = tmp_path / f"cut-{cut}"
        case.mkdir()
        (case / seg.name).write_bytes(data[:cut])
        assert await survivors(case) == BUT_LAST, f"cut at byte {cut}"


async def test_corrupt_middle_segment_stops_the_start_unless_repaired(tmp_path: Path) -> None:
    await build(tmp_path, [2] * 30, segment_bytes=400)
    files = segments(tmp_path)
    assert len(files) >= 3
    middle = files[1]
    first_in_middle = int(middle.stem)
    flip(middle, record_offsets(middle)[1] + 30)
    with pytest.raises(CorruptLogError, match="--repair") as info:
        await WriteAheadLog(tmp_path).open()
    later = sum(p.stat().st_size for p in files[2:])
    assert f"and the {len(files) - 2} later segment(s) ({later} bytes)" in str(info.value)
    assert segments(tmp_path) == files  # refusing changes nothing
    kept = await survivors(tmp_path, repair=True)
    # Everything before the corrupt record of the middle segment, nothing after it.
    assert kept == [entry(i) for i in range(first_in_middle - 1 + 2)]
    assert len(segments(tmp_path)) == 2


async def test_a_damaged_header_of_a_middle_segment_counts_only_the_segments_after_it(
    tmp_path: Path,
) -> None:
    await build(tmp_path, [2] * 9, segment_bytes=400)
    files = segments(tmp_path)
    assert len(files) == 3
    flip(files[1], 10)
    with pytest.raises(CorruptLogError) as info:
        await WriteAheadLog(tmp_path).open()
    message = str(info.value)
    assert f"{files[1]}: segment header checksum mismatch (at byte 0)" in message
    size = files[1].stat().st_size
    later = files[2].stat().st_size
    drops = f"dropping {size} bytes of this segment from byte 0 on"
    assert f"{drops} and the 1 later segment(s) ({later} bytes)" in message


async def test_short_writes_are_finished_before_acknowledging(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, io=FaultyIO())
    await wal.open()
    for i in range(20):
        await wal.wait_durable(wal.append(entry(i)))
    await wal.close()
    assert await survivors(tmp_path) == [entry(i) for i in range(20)]


@pytest.mark.parametrize(
    ("err", "on", "fail_at"),
    [(errno.EIO, "write", 45), (errno.ENOSPC, "write", 60), (errno.EIO, "fsync", 8)],
)
async def test_io_errors_acknowledge_nothing_unwritten(
    tmp_path: Path, err: int, on: str, fail_at: int
) -> None:
    failures: list[LogError] = []
    io = FaultyIO(fail_at=fail_at, err=err, on=on)
    wal = WriteAheadLog(tmp_path, io=io, on_failure=failures.append)
    await wal.open()
    io.armed = True
    acknowledged: list[bytes] = []
    refused = 0
    for i in range(30):
        try:
            await wal.wait_durable(wal.append(entry(i)))
            acknowledged.append(entry(i))
        except LogError as e:
            refused += 1
            kind = "disk full" if err == errno.ENOSPC else "disk error"
            assert str(e).startswith(f"{kind}: {segments(tmp_path)[-1]}: {os.strerror(err)}")
    await wal.close()
    assert failures and refused and acknowledged
    kept = await survivors(tmp_path)
    # What was acknowledged survived; anything else that survived was written whole, in order.
    assert kept[: len(acknowledged)] == acknowledged
    assert kept == ALL_ENTRIES[: len(kept)]


ALL_ENTRIES = [entry(i) for i in range(30)]


class NoRoomForANewSegment:
    """Once armed, a disk with room for what goes into the current segment and none for a new
    one."""

    armed = False

    def write(self, fd: int, data: memoryview) -> int:
        if self.armed and os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fdatasync(fd)


async def test_a_segment_that_cannot_be_created_leaves_no_temporary_file(tmp_path: Path) -> None:
    failures: list[LogError] = []
    io = NoRoomForANewSegment()
    wal = WriteAheadLog(tmp_path, segment_bytes=400, io=io, on_failure=failures.append)
    await wal.open()
    io.armed = True
    acknowledged = []
    with pytest.raises(LogError, match=r"^disk full: .*\.tmp: No space left on device"):
        for i in range(100):
            await wal.wait_durable(wal.append(entry(i)))
            acknowledged.append(entry(i))
    await wal.close()
    assert failures and 0 < len(acknowledged) < 100
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".seg")] == []
    assert (await survivors(tmp_path))[: len(acknowledged)] == acknowledged


async def test_close_right_after_an_append_writes_it_and_returns(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    await wal.open()
    await asyncio.sleep(0.01)  # the writer waits for work
    wal.append(b"last")  # wakes the writer, which has not run yet when close() wakes it again
    async with asyncio.timeout(5):  # in this task: a new one would let the writer run first
        await wal.close()
    reopened = WriteAheadLog(tmp_path)
    await reopened.open()
    assert [e for _, e in reopened.read(0)] == [b"last"]
    await reopened.close()
