"""The write-ahead log against real files: group commit, rotation, and a corruption table in the
style of Prometheus' TestWALRepair, where each case says exactly which entries survive."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from server.errors import CorruptLogError, LogError
from server.wal import RECORD_HEADER, SEGMENT_HEADER, WriteAheadLog


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
        got = list(wal.replay(0))
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


def record_offsets(path: Path) -> list[int]:
    """Byte offsets of the records of a segment."""
    data = path.read_bytes()
    offsets, offset = [], SEGMENT_HEADER.size
    while offset < len(data):
        offsets.append(offset)
        (length,) = RECORD_HEADER.unpack_from(data, offset)[:1]
        offset += RECORD_HEADER.size + length
    return offsets


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


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
    assert [p for _, p in wal.replay(0)] == [entry(i) for i in range(120)]
    assert [s for s, _ in wal.replay(100)] == list(range(101, 121))
    second_last = wal.segments[-2].last_seq
    dropped = await wal.truncate_before(second_last)
    assert dropped == len(files) - 1
    assert wal.first_seq == second_last + 1
    assert [s for s, _ in wal.replay(0)] == list(range(second_last + 1, 121))
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
    ("bit flip in second record", _flip_at(lambda s: record_offsets(s)[1] + 30), ALL[:2]),
    ("garbage appended", _append(b"\x07garbage that is not a record at all"), ALL),
    ("zero-filled tail", _append(b"\x00" * 4096), ALL),
    ("bit flip in segment header", _flip_at(lambda s: 10), []),
]


@pytest.mark.parametrize(("name", "corrupt", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_corruption_of_the_newest_segment_is_cut_at_the_last_whole_record(
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
    with pytest.raises(CorruptLogError, match="--repair"):
        await WriteAheadLog(tmp_path).open()
    assert segments(tmp_path) == files  # refusing changes nothing
    kept = await survivors(tmp_path, repair=True)
    # Everything before the corrupt record of the middle segment, nothing after it.
    assert kept == [entry(i) for i in range(first_in_middle - 1 + 2)]
    assert len(segments(tmp_path)) == 2


class FaultyIO:
    """Short writes always; an error from the `fail_at`-th write or fsync on."""

    def __init__(self, fail_at: int | None = None, err: int = errno.EIO, on: str = "write"):
        self.fail_at = fail_at
        self.err = err
        self.on = on
        self.calls = 0
        self.armed = False

    def write(self, fd: int, data: memoryview) -> int:
        if self.on == "write":
            self._maybe_fail()
        return os.write(fd, data[: max(1, len(data) // 3)])  # a short write, every time

    def fsync(self, fd: int) -> None:
        if self.on == "fsync":
            self._maybe_fail()
        os.fdatasync(fd)

    def _maybe_fail(self) -> None:
        if not self.armed:
            return
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise OSError(self.err, os.strerror(self.err))


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
            assert os.strerror(err) in str(e)
    await wal.close()
    assert failures and refused and acknowledged
    kept = await survivors(tmp_path)
    # What was acknowledged survived; anything else that survived was written whole, in order.
    assert kept[: len(acknowledged)] == acknowledged
    assert kept == ALL_ENTRIES[: len(kept)]


ALL_ENTRIES = [entry(i) for i in range(30)]


async def test_close_right_after_an_append_writes_it_and_returns(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    await wal.open()
    await asyncio.sleep(0.01)  # the writer waits for work
    wal.append(b"last")  # wakes the writer, which has not run yet when close() wakes it again
    async with asyncio.timeout(5):  # in this task: a new one would let the writer run first
        await wal.close()
    reopened = WriteAheadLog(tmp_path)
    await reopened.open()
    assert [e for _, e in reopened.replay(0)] == [b"last"]
    await reopened.close()
