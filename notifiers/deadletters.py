"""Dead letters: notifications that will not be attempted again, kept where people can read them.

`<data-dir>/outbox/dead-letters.jsonl` holds one JSON object per line (see `DeadLetter`), synced
to disk as it is written; `pipewarden dead-letters --data-dir DIR` prints it. Past 16 MiB the
file is renamed to `dead-letters.1.jsonl` (replacing an older one) and a new one is started.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipewarden.server.storage.files import write_all

__all__ = ["FILE_NAME", "DeadLetter", "DeadLetters", "read"]

FILE_NAME = "dead-letters.jsonl"
MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class DeadLetter:
    """One notification given up on."""

    time: str
    """When it was given up, RFC 3339 UTC."""
    notification_id: str
    """The notification."""
    receiver: str
    """The receiver's name."""
    receiver_type: str
    """pagerduty, slack, email, webhook or console."""
    event: str
    """fired, escalated, acknowledged or resolved."""
    alert_id: str
    """The alert."""
    pipeline_id: str
    """Its pipeline."""
    team: str
    """Its team."""
    severity: str
    """critical, high or medium."""
    summary: str
    """The notification's one-line text."""
    attempts: int
    """How many attempts were made (0 when it never got a turn)."""
    error: str
    """Why the last attempt failed, or why none was made."""
    status: int | None
    """The receiver's last HTTP status or SMTP code, when it answered."""
    response: str
    """The beginning of the receiver's last answer."""
    submitted: str
    """When it was submitted, RFC 3339 UTC."""


class DeadLetters:
    """The dead-letter file of one outbox."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / FILE_NAME

    async def add(self, letter: DeadLetter) -> None:
        """Append one line and sync it, off the event loop."""
        line = json.dumps(asdict(letter), ensure_ascii=False) + "\n"
        await asyncio.to_thread(self._write, line.encode())

    def _write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.path.stat().st_size + len(data) > MAX_BYTES:
                os.replace(self.path, self.path.with_name("dead-letters.1.jsonl"))
        except FileNotFoundError:
            pass
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def read(data_dir: str | Path) -> list[dict[str, Any]]:
    """Every dead letter under `<data_dir>/outbox/`, oldest first (the rotated file first). A
    line cut short by a crash is skipped."""
    outbox = Path(data_dir) / "outbox"
    letters: list[dict[str, Any]] = []
    for path in (outbox / "dead-letters.1.jsonl", outbox / FILE_NAME):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                letters.append(value)
    return letters
