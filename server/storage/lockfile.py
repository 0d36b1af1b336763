"""A directory's LOCK file, held (flock) by one process at a time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pipewarden.server.base.errors import LogError

__all__ = ["hold"]


def hold(directory: Path, why: str = "") -> int:
    """Lock `<directory>/LOCK` (making the directory if need be) and return its descriptor: the
    lock lasts until it is closed, or the process ends. LogError, ending in `why`, when another
    process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogError(
            f"{directory} is in use by another process (its LOCK file is held){why}"
        ) from None
    return fd
