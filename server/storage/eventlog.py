"""The event-log seam: every accepted change passes through it before it is acknowledged.

The in-memory implementation here keeps records for the life of the process; the write-ahead
log puts the same interface on disk, and a later one a shared stream across the network: so
`open`, `wait_durable` and `replay` are coroutines (replay hands records over in batches), and
`append` only queues a record and numbers it, without waiting. A log that cannot keep what it
took raises LogError from `wait_durable`; the partition that owns it stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
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

    def replay(self, after: int) -> AsyncIterator[Sequence[tuple[int, bytes]]]:
        """The stored records with sequence numbers above `after`, in order, in batches (an
        async generator: `async for batch in log.replay(after)`)."""
        ...

    async def close(self) -> None:
        """Make everything appended durable and release the log. Idempotent."""
        ...

    @property
    def first_seq(self) -> int:
        """The number of the first record still held (last_seq + 1 when empty)."""
        ...

    def start_after(self, seq: int) -> None:
        """Number the next record at least seq + 1 (after restoring a snapshot at seq)."""
        ...

    async def truncate_before(self, seq: int) -> int:
        """Drop what is no longer needed once a snapshot covers everything up to `seq`; return
        how many storage units (segments) were dropped."""
        ...

    def size_bytes(self) -> int:
        """Bytes the log holds."""
        ...


class MemoryLog:
    """Records in a list: durable as soon as appended, lost with the process."""

    def __init__(self) -> None:
        self._records: list[bytes] = []
        self._base = 0  # records numbered up to _base were dropped or skipped

    @property
    def last_seq(self) -> int:
        """The sequence number of the last appended record; 0 when empty."""
        return self._base + len(self._records)

    @property
    def first_seq(self) -> int:
        """The number of the first record held."""
        return self._base + 1

    def start_after(self, seq: int) -> None:
        """Number the next record at least seq + 1."""
        if seq > self.last_seq:
            self._records.clear()
            self._base = seq

    async def truncate_before(self, seq: int) -> int:
        """Keep everything: memory is not reclaimed here, so replay stays whole."""
        return 0

    def size_bytes(self) -> int:
        """Bytes held."""
        return sum(len(r) for r in self._records)

    async def open(self) -> None:
        """Nothing to open."""

    def append(self, payload: bytes) -> int:
        """Add a record."""
        self._records.append(payload)
        return self.last_seq

    async def wait_durable(self, seq: int) -> None:
        """Memory is as durable as it gets here."""

    async def replay(self, after: int) -> AsyncIterator[list[tuple[int, bytes]]]:
        """The records after `after`, in one batch."""
        records = list(self.read(after))
        if records:
            yield records

    def read(self, after: int) -> Iterator[tuple[int, bytes]]:
        """The records after `after`, one by one."""
        for i in range(max(after - self._base, 0), len(self._records)):
            yield self._base + i + 1, self._records[i]

    async def close(self) -> None:
        """Nothing to release."""
