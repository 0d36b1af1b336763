"""The file helpers every durable writer shares (server/storage/files.py), on real files."""

from __future__ import annotations

import array
import errno
import os
from pathlib import Path

import pytest

from pipewarden.server.storage.files import fsync_dir, remove, truncate, write_all


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def test_write_all_writes_every_byte_however_short_the_writes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    calls: list[int] = []

    def three_at_a_time(fd: int, data: memoryview) -> int:
        calls.append(len(data))
        return os.write(fd, data[:3])

    fd = _open(path)
    try:
        write_all(fd, b"0123456789", three_at_a_time)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"0123456789"
    assert calls == [10, 7, 4, 1]


def test_write_all_counts_bytes_of_a_wide_buffer(tmp_path: Path) -> None:
    # A view of 8-byte integers: a short write is counted in bytes, not in items.
    numbers = array.array("q", range(1000))
    path = tmp_path / "f"
    fd = _open(path)
    try:
        write_all(fd, memoryview(numbers), lambda fd, data: os.write(fd, data[:1001]))
    finally:
        os.close(fd)
    assert path.read_bytes() == numbers.tobytes()


def test_a_write_that_writes_nothing_is_a_full_disk(tmp_path: Path) -> None:
    fd = _open(tmp_path / "f")
    try:
        with pytest.raises(OSError) as raised:
            write_all(fd, b"data", lambda fd, data: 0)
    finally:
        os.close(fd)
    assert raised.value.errno == errno.ENOSPC


def test_truncate_cuts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"keep this, not that")
    truncate(path, 9)
    assert path.read_bytes() == b"keep this"


def test_remove_forgives_a_file_already_gone_and_fsync_dir_syncs(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    remove(path)
    remove(path)
    assert not path.exists()
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")
