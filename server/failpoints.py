"""Failpoints: kill the process at named places, for crash tests.

`PIPEWARDEN_FAILPOINTS=wal-after-write` makes the process SIGKILL itself the first time it
reaches that place; `name@3` waits for the third time. Several may be given, comma-separated.
Off (and one dictionary lookup) unless the variable is set.
"""

from __future__ import annotations

import os
import signal

__all__ = ["NAMES", "NOTIFY_NAMES", "PREFETCH_NAMES", "hit"]

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
PREFETCH_NAMES = ("replay-prefetch",)
"""In the replay prefetch's child (server/prefetch.py), after it sends an entry: the child dies
and the server replays the rest alone."""


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.partition("@")
        known = NAMES + NOTIFY_NAMES + PREFETCH_NAMES
        if name not in known:
            raise ValueError(f"PIPEWARDEN_FAILPOINTS: unknown failpoint {name!r} ({known})")
        points[name] = int(count) if count else 1
    return points


_armed = _parse(os.environ.get("PIPEWARDEN_FAILPOINTS", ""))


def hit(name: str) -> None:
    """Die here, as kill -9 would, if the failpoint `name` is armed and due."""
    if not _armed or name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
