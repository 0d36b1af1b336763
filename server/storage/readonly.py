"""Reading a whole file without copying it: a read-only memory map."""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Buffer", "mapped"]

Buffer = bytes | mmap.mmap
"""What `mapped` gives: slicing either gives bytes."""


@contextlib.contextmanager
def mapped(path: Path, size: int | None = None) -> Iterator[Buffer]:
    """The first `size` bytes of `path` (all of it by default), mapped read-only for the block.

    A recovery reads tens of megabytes of log and snapshot once: mapping them costs neither the
    copy that reading makes nor fresh memory to hold it. Only for files nothing truncates while
    the block runs (touching a mapped page past a new end of file is a SIGBUS)."""
    with open(path, "rb") as f:
        length = os.fstat(f.fileno()).st_size
        if size is not None:
            length = min(length, size)
        if length == 0:  # an empty file cannot be mapped
            yield b""
            return
        data = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ)
    try:
        yield data
    finally:
        # A view still held somewhere keeps the map until it is collected; never fail here.
        with contextlib.suppress(BufferError):
            data.close()
