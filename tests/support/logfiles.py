"""Log segments on disk as the tests damage and read them: record offsets, a flipped bit, and file
I/O that writes short and fails on cue."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pipewarden.server.storage.wal import RECORD_HEADER, SEGMENT_HEADER

__all__ = ["FaultyIO", "flip", "record_offsets"]


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
