"""The file operations that durable writes are made of, written once: write all of a buffer,
sync a directory after a rename or a new file in it, cut a file short durably, remove a file that
may be gone. The log, snapshots, the lineage producers file and the outbox use these.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from pipewarden.server.storage.descriptors import open_file

__all__ = ["fsync_dir", "remove", "truncate", "write_all"]


def write_all(
    fd: int,
    data: bytes | memoryview,
    write: Callable[[int, memoryview], int] = os.write,
) -> None:
    """Write every byte of `data` to `fd`, however many calls it takes. A write that writes
    nothing raises ENOSPC rather than spin (`write`: os.write, or a test's faulty one)."""
    view = memoryview(data).cast("B")
    while view:
        n = write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "write wrote nothing")
        view = view[n:]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the directory's entries durable: a file created, renamed or removed in it."""
    fd = open_file(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate(path: str | os.PathLike[str], size: int) -> None:
    """Cut the file to `size` bytes and sync it."""
    fd = open_file(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Delete the file; one already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
