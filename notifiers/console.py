"""The console receiver: one line per notification on standard output.

It is the default when no receiver is configured, so `make run` shows what would be sent.
"""

from __future__ import annotations

import sys
from typing import TextIO

from pipewarden.notifiers.config import ConsoleReceiver
from pipewarden.notifiers.notification import Notification, summary, unix_iso

__all__ = ["ConsoleNotifier", "line"]


def line(n: Notification) -> str:
    """`2026-05-28T10:00:00.000Z notify <receiver>: [CRITICAL] sales.orders (team sales) …`."""
    return f"{unix_iso(n.created)} notify {n.receiver}: {summary(n.event, 100_000)}"


class ConsoleNotifier:
    """Writes to a stream (standard output by default)."""

    def __init__(self, receiver: ConsoleReceiver, stream: TextIO | None = None) -> None:
        self.receiver = receiver
        self.stream = stream

    async def send(self, n: Notification) -> None:
        """Write the line and flush."""
        out = self.stream or sys.stdout
        out.write(line(n) + "\n")
        out.flush()
