"""The event-log seam: every accepted change passes through it before it is acknowledged.

The in-memory implementation here keeps records for the life of the process; the write-ahead
log puts the same interface on disk, and a later one a shared stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

__all__ = ["EventLog", "MemoryLog"]


class EventLog(Protocol):
    """An append-only sequence of records numbered 1, 2, 3, ..."""

    @property
    def last_seq(self) -> int:
        """The sequence number of the last appended record; 0 when empty."""
        ...

    async def open(self) -> None:
        """Make the log ready; after it, `replay` yields what is stored."""
        ...

    def append(self, payload: bytes) -> int:
        """Add a record and return its sequence number. It is durable only once
        `wait_durable` for that number returns."""
        ...

    async def wait_durable(self, seq: int) -> None:
        """Return once records up to `seq` are durable; raise LogError if they cannot be."""
        ...

    def replay(self, after: int) -> Iterator[tuple[int, bytes]]:
        """The stored records with sequence numbers above `after`, in order."""
        ...

    async def close(self) -> None:
        """Make everything appended durable and release the log. Idempotent."""
        ...


class MemoryLog:
    """Records in a list: durable as soon as appended, lost with the process."""

    def __init__(self) -> None:
        self._records: list[bytes] = []

    @property
    def last_seq(self) -> int:
        """The sequence number of the last appended record; 0 when empty."""
        return len(self._records)

    async def open(self) -> None:
        """Nothing to open."""

    def append(self, payload: bytes) -> int:
        """Add a record."""
        self._records.append(payload)
        return len(self._records)

    async def wait_durable(self, seq: int) -> None:
        """Memory is as durable as it gets here."""

    def replay(self, after: int) -> Iterator[tuple[int, bytes]]:
        """The records after `after`."""
        for i in range(after, len(self._records)):
            yield i + 1, self._records[i]

    async def close(self) -> None:
        """Nothing to release."""
