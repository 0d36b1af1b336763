"""File descriptors: one budget for the connections to our ports and the files we must open.

A descriptor the log needs for its next segment must never be taken by an idle connection: with
`ulimit -n 1024` and no cap, a thousand idle TCP connections made the log's segment switch fail
with EMFILE, and the server stopped. So, at start (`plan`):

- the soft RLIMIT_NOFILE is raised to the hard limit (systemd's default soft limit is 1024);
- `reserved_descriptors` of it are kept for the log, snapshots, the notifiers' outbox and
  outgoing connections, on top of what the process holds already;
- the rest caps the connections the gRPC and HTTP ports accept (the configured caps, lowered
  to fit).

And, in case something else leaks descriptors, `SPARES` holds a few open (on /dev/null):
`open_file` gives one up and tries again when an open fails with EMFILE.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from dataclasses import dataclass

__all__ = ["SPARES", "Budget", "Spares", "in_use", "open_file", "plan", "raise_limit"]

log = logging.getLogger(__name__)

SPARE_DESCRIPTORS = 8
"""Descriptors held open on /dev/null, given up one by one to opens that fail with EMFILE."""
GRPC_SHARE = 0.75
"""The gRPC port's share of the descriptors left for connections, when HTTP is on too."""
MIN_CONNECTIONS = 4
"""Fewer connections than this per port would not serve: the start fails instead."""


def raise_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the soft limit now."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise, nothing known
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, e)
    elif hard == resource.RLIM_INFINITY and soft == resource.RLIM_INFINITY:
        return 1 << 20
    return soft


def in_use() -> int:
    """How many descriptors the process holds now."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(directory))
    return 64  # cannot tell: a guess of what a started server holds


@dataclass(frozen=True)
class Budget:
    """How the open-file limit is shared out."""

    limit: int
    """The soft RLIMIT_NOFILE, after raising it."""
    held: int
    """Descriptors the process held when the budget was made."""
    reserved: int
    """Kept for files and outgoing connections (server.reserved_descriptors)."""
    grpc_connections: int
    """Connections the gRPC port accepts at once; beyond them a connection is closed at once."""
    http_connections: int
    """Connections the HTTP port accepts at once; beyond them one is answered 503 and closed."""


def plan(
    limit: int, held: int, reserved: int, grpc_wanted: int, http_wanted: int, *, http: bool
) -> Budget:
    """Share `limit` descriptors: `held` and `reserved` first, then the connection caps, each
    lowered to fit (logged, naming its key). Raises OSError when too few are left."""
    free = limit - held - reserved - SPARE_DESCRIPTORS
    grpc_room = int(free * GRPC_SHARE) if http else free
    http_room = free - grpc_room if http else 0
    if grpc_room < MIN_CONNECTIONS or (http and http_room < MIN_CONNECTIONS):
        raise OSError(
            errno.EMFILE,
            f"the open-file limit is {limit} (ulimit -n); {held} are in use and "
            f"{reserved} are kept for files (server.reserved_descriptors), which leaves too few "
            "for connections: raise the limit or lower server.reserved_descriptors",
        )
    grpc_cap = _fit(grpc_wanted, grpc_room, "server.max_grpc_connections", limit)
    http_cap = _fit(http_wanted, http_room, "server.max_http_connections", limit) if http else 0
    return Budget(limit, held, reserved, grpc_cap, http_cap)


def _fit(wanted: int, room: int, key: str, limit: int) -> int:
    if wanted <= room:
        return wanted
    log.info(
        "%s is %d, but the open-file limit of %d leaves room for %d: capped there",
        key,
        wanted,
        limit,
        room,
    )
    return room


class Spares:
    """Descriptors held open for the moment an open fails with EMFILE."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        self._lock = threading.Lock()  # the log opens segments in its writer thread

    def hold(self, count: int = SPARE_DESCRIPTORS) -> None:
        """Open spares until `count` are held (as many as can be)."""
        with self._lock:
            while len(self._fds) < count:
                try:
                    self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
                except OSError:
                    return

    def release(self) -> bool:
        """Close one spare; False when none is left."""
        with self._lock:
            if not self._fds:
                return False
            os.close(self._fds.pop())
        log.warning("out of file descriptors: a spare one was given up for a file of ours")
        return True

    def close(self) -> None:
        """Close every spare. Idempotent."""
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()

    def __len__(self) -> int:
        return len(self._fds)


SPARES = Spares()
"""The process's spares (descriptors are the process's, so there is one set)."""


def open_file(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
    """os.open, which, when the process is out of descriptors, gives up a spare and tries
    again: the log, snapshots and outbox still open their files."""
    while True:
        try:
            return os.open(path, flags, mode)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE) or not SPARES.release():
                raise
