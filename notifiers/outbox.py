"""The durable outbox: a notification is on disk before it is attempted, and marked settled once
the receiver has accepted it (or it went to the dead letters).

It is a write-ahead log (`server/storage/wal.py`, the same segmented, CRC-32C-framed,
group-committed log as the event log) under `<data-dir>/outbox/`, whose entries are
`pipewarden.storage.v1.OutboxRecord`s: a notification, a settlement, or a notification-log entry.
`add` appends and returns at once; a worker waits for `wait_durable` before the first attempt,
so `kill -9` at any moment loses nothing that was submitted: on the next `open`, replay gives
back every notification not settled, to be sent again (at least once; PagerDuty's dedup_key
and the webhook's Idempotency-Key make a repeat harmless). A settlement is not waited for: if it
is lost in a crash the notification is sent once more.

Compaction keeps the log small: once it has grown past `compact_bytes`, everything still live
(the pending notifications and the notification log) is written again at its end and the
segments before it are deleted. A lock file keeps a second process off the same outbox.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipewarden.notifiers.nflog import NotificationLog
from pipewarden.notifiers.notification import Notification, state_of
from pipewarden.server.base.errors import LogError
from pipewarden.server.storage import lockfile
from pipewarden.server.storage.wal import FileIO, WriteAheadLog
from pipewarden.storage.v1 import outbox_pb2
from pipewarden.v1 import alert_pb2

__all__ = ["DEAD", "DELIVERED", "Outbox", "Recovered"]

log = logging.getLogger(__name__)

DELIVERED = outbox_pb2.OUTBOX_OUTCOME_DELIVERED
DEAD = outbox_pb2.OUTBOX_OUTCOME_DEAD
NANOS = 1_000_000_000


@dataclass
class Recovered:
    """What `open` found."""

    pending: list[Notification] = field(default_factory=list)
    """Notifications written and never settled, in the order they were submitted."""
    nflog: NotificationLog = field(default_factory=NotificationLog)
    """What each receiver was last told."""
    entries: int = 0
    """Log entries replayed."""
    cut_bytes: int = 0
    """Bytes of a torn tail cut off (a crash in the middle of a write)."""


class Outbox:
    """The outbox of one node. `open`, then `add`/`settle`; `close` when done."""

    def __init__(
        self,
        directory: str | Path,
        *,
        fsync: str = "always",
        segment_bytes: int = 1 << 20,
        compact_bytes: int = 4 << 20,
        io: FileIO | None = None,
        repair: bool = False,
    ) -> None:
        """`io` replaces the log's file writes and syncs (tests inject failing ones); `repair`
        is the log's (see server/storage/wal.py)."""
        self.directory = Path(directory)
        self.compact_bytes = compact_bytes
        self.failed = False
        """True once the log could not be written: notifications are then kept in memory only."""
        self._wal = WriteAheadLog(
            self.directory,
            fsync=fsync,
            segment_bytes=segment_bytes,
            io=io,
            repair=repair,
            on_failure=self._failed,
        )
        self._pending: dict[str, Notification] = {}
        self._lock_fd = -1
        self._size_after_compaction = 0

    @property
    def pending(self) -> list[Notification]:
        """Notifications not yet settled, oldest first."""
        return list(self._pending.values())

    def size_bytes(self) -> int:
        """Bytes in the log's segments."""
        return self._wal.size_bytes()

    async def open(self) -> Recovered:
        """Lock the directory, recover the log (cutting a torn tail) and replay it."""
        self._lock_fd = lockfile.hold(self.directory)
        await self._wal.open()
        found = Recovered(cut_bytes=self._wal.report.cut_bytes)
        nflog = found.nflog
        for _, payload in self._wal.read(0):
            found.entries += 1
            record = outbox_pb2.OutboxRecord.FromString(payload)
            which = record.WhichOneof("entry")
            if which == "notification":
                n = _notification(record.notification)
                # A copy written by compaction moves the notification to the end: the copies
                # are in submission order, and an older record may survive in a segment that
                # compaction could not delete.
                self._pending.pop(n.notification_id, None)
                self._pending[n.notification_id] = n
                _note(nflog, n)
            elif which == "settled":
                done = self._pending.pop(record.settled.notification_id, None)
                if done is not None and record.settled.outcome == DEAD:
                    self.untell(nflog, done)
            elif which == "noted":
                e = record.noted
                nflog.record(e.alert_id, e.receiver, e.severity, e.state, e.sent_unix_nanos / NANOS)
        found.pending = list(self._pending.values())
        self._size_after_compaction = self.size_bytes()
        return found

    @property
    def pending_count(self) -> int:
        """How many notifications are not yet settled."""
        return len(self._pending)

    def add(
        self, notification_id: str, receiver: str, event: alert_pb2.AlertEvent, created: float
    ) -> Notification:
        """Write a notification; returns it with its log sequence number (0 when the log has
        failed and it is kept in memory only). Does not wait: see `wait_durable`."""
        record = outbox_pb2.OutboxRecord(
            notification=outbox_pb2.OutboxNotification(
                notification_id=notification_id,
                receiver=receiver,
                event=event,
                created_unix_nanos=int(created * NANOS),
            )
        )
        n = Notification(notification_id, receiver, event, created, self._append(record))
        self._pending[notification_id] = n
        return n

    async def wait_durable(self, n: Notification) -> None:
        """Return once the notification is on disk (at once if the log has failed)."""
        if n.seq and not self.failed:
            # When the log fails, _failed has said so; deliver anyway: a page matters more.
            with contextlib.suppress(LogError):
                await self._wal.wait_durable(n.seq)

    def settle(self, n: Notification, outcome: outbox_pb2.OutboxOutcome.ValueType) -> None:
        """Mark a notification as needing no further attempt."""
        if self._pending.pop(n.notification_id, None) is None:
            return
        self._append(
            outbox_pb2.OutboxRecord(
                settled=outbox_pb2.OutboxSettled(notification_id=n.notification_id, outcome=outcome)
            )
        )

    def untell(self, nflog: NotificationLog, dead: Notification) -> None:
        """A settled notification went to the dead letters: its receiver was not told. If the
        notification log's entry is that notification's, it goes back to the newest one still
        pending for the same alert and receiver, or is dropped. (Replay does the same, so the
        log after a restart is the log before it.)"""
        alert_id, receiver = dead.alert.alert_id, dead.receiver
        entry = nflog.get(alert_id, receiver)
        if entry is None or abs(entry.sent_at - dead.created) > 1e-6:
            return  # a newer notification was recorded since
        nflog.forget(alert_id, receiver)
        for n in reversed(self._pending.values()):
            if n.receiver == receiver and n.alert.alert_id == alert_id:
                _note(nflog, n)
                return

    def note(self, alert_id: str, receiver: str, severity: int, state: int, when: float) -> None:
        """Write a notification-log entry that no notification carries."""
        self._append(_noted(alert_id, receiver, severity, state, when))

    def compaction_due(self) -> bool:
        """Whether the log has grown enough to be worth compacting."""
        threshold = max(self.compact_bytes, 2 * self._size_after_compaction)
        return not self.failed and self.size_bytes() > threshold

    async def compact(self, nflog: NotificationLog) -> int:
        """Write what is live again and delete the segments before it; returns how many
        segments were deleted. Nothing may be added meanwhile that the copy would miss: the copy
        is taken and appended without waiting in between."""
        if self.failed:
            return 0
        cut = self._wal.last_seq
        last = cut
        # The pending notifications first, then the notification log as it is now: replayed,
        # the log's entries overwrite what the notifications would record, as they did live.
        for n in list(self._pending.values()):
            last = self._append(
                outbox_pb2.OutboxRecord(
                    notification=outbox_pb2.OutboxNotification(
                        notification_id=n.notification_id,
                        receiver=n.receiver,
                        event=n.event,
                        created_unix_nanos=int(n.created * NANOS),
                    )
                )
            )
        for alert_id, receiver, entry in nflog.entries():
            last = self._append(
                _noted(alert_id, receiver, entry.severity, entry.state, entry.sent_at)
            )
        if last and not self.failed:
            await self._wal.wait_durable(last)
        dropped = await self._wal.truncate_before(cut)
        self._size_after_compaction = self.size_bytes()
        return dropped

    async def close(self) -> None:
        """Flush what is written and release the directory. Idempotent."""
        await self._wal.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- internals -------------------------------------------------------------------------------

    def _append(self, record: outbox_pb2.OutboxRecord) -> int:
        if self.failed:
            return 0
        try:
            return self._wal.append(record.SerializeToString())
        except LogError:
            return 0

    def _failed(self, error: LogError) -> None:
        if not self.failed:
            log.error(
                "the notification outbox cannot be written (%s); notifications are kept in "
                "memory only from now on, and a crash would lose those pending",
                error,
            )
        self.failed = True


def _notification(record: outbox_pb2.OutboxNotification) -> Notification:
    event = alert_pb2.AlertEvent()
    event.CopyFrom(record.event)
    return Notification(
        notification_id=record.notification_id,
        receiver=record.receiver,
        event=event,
        created=record.created_unix_nanos / NANOS,
    )


def _note(nflog: NotificationLog, n: Notification) -> None:
    nflog.record(n.alert.alert_id, n.receiver, n.alert.severity, state_of(n.event), n.created)


def _noted(
    alert_id: str, receiver: str, severity: int, state: int, when: float
) -> outbox_pb2.OutboxRecord:
    return outbox_pb2.OutboxRecord(
        noted=outbox_pb2.OutboxNoted(
            alert_id=alert_id,
            receiver=receiver,
            severity=severity,  # type: ignore[arg-type]
            state=state,  # type: ignore[arg-type]
            sent_unix_nanos=int(when * NANOS),
        )
    )
