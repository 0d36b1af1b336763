"""Failpoints: kill the process at named places, for crash tests.

`PIPEWARDEN_FAILPOINTS=wal-after-write` makes the process SIGKILL itself the first time it
reaches that place; `name@3` waits for the third time. Several may be given, comma-separated.
`name:raise` (or `name@3:raise`) raises FailpointError there instead, once, as a bug would: for
tests of a task that dies. Off (and one dictionary lookup) unless the variable is set.
"""

from __future__ import annotations

import os
import signal

__all__ = [
    "NAMES",
    "NOTIFY_NAMES",
    "PREFETCH_NAMES",
    "TASK_NAMES",
    "FailpointError",
    "arm",
    "hit",
]

NAMES = (
    "wal-before-write",
    "wal-after-write",
    "wal-after-fsync",
    "wal-mid-rotate",
    "wal-before-truncate",
    "snapshot-mid-write",
    "snapshot-before-rename",
)
"""Every failpoint of ingestion and snapshots, in the order a request and a snapshot meet them."""
NOTIFY_NAMES = ("notify-before-submit",)
"""The notifiers' failpoint: an alert event durable in the log and not yet in their outbox."""
TASK_NAMES = ("alert-tick",)
"""In the long-lived loops (the alert timers' tick), for tests of a task that dies (`:raise`)."""
PREFETCH_NAMES = ("replay-prefetch",)
"""In the replay prefetch's child (server/partition/prefetch.py), after it sends an entry: the
child dies and the server replays the rest alone."""


class FailpointError(RuntimeError):
    """Raised at a failpoint armed with `:raise`: an unexpected error, as a bug's would be."""


def _parse(spec: str) -> tuple[dict[str, int], set[str]]:
    points: dict[str, int] = {}
    raising: set[str] = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        item, _, mode = item.partition(":")
        name, _, count = item.partition("@")
        known = NAMES + NOTIFY_NAMES + PREFETCH_NAMES + TASK_NAMES
        if name not in known:
            raise ValueError(f"PIPEWARDEN_FAILPOINTS: unknown failpoint {name!r} ({known})")
        if mode not in ("", "raise"):
            raise ValueError(f"PIPEWARDEN_FAILPOINTS: {name}: unknown mode {mode!r} (raise)")
        points[name] = int(count) if count else 1
        if mode:
            raising.add(name)
    return points, raising


_armed, _raising = _parse(os.environ.get("PIPEWARDEN_FAILPOINTS", ""))


def arm(spec: str) -> None:
    """Arm the failpoints `spec` names, as PIPEWARDEN_FAILPOINTS would at start, in place of
    those armed now ("" disarms them all): for tests that run the server in their own process
    (a child it forks inherits them)."""
    global _armed, _raising
    _armed, _raising = _parse(spec)


def hit(name: str) -> None:
    """Die here, as kill -9 would, if the failpoint `name` is armed and due (or raise
    FailpointError, once, if it is armed with `:raise`)."""
    if not _armed or name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] == 0 and name in _raising:
        raise FailpointError(f"failpoint {name}")
    if _armed[name] <= 0 and name not in _raising:
        os.kill(os.getpid(), signal.SIGKILL)
