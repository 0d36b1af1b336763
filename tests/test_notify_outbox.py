"""The outbox on its own: replay after a reopen, and a log that cannot be written."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from pipewarden.notifiers.outbox import DEAD, DELIVERED, Outbox
from tests.support.alert_events import event


async def test_replay_gives_back_what_is_pending_and_what_was_told(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    await box.open()
    a = box.add("n-a", "oncall", event("a"), 100.0)
    b = box.add("n-b", "oncall", event("b"), 101.0)
    c = box.add("n-c", "chat", event("c", "high"), 102.0)
    await box.wait_durable(c)
    box.settle(a, DELIVERED)
    box.settle(b, DEAD)
    box.note("d", "chat", 2, 3, 103.0)
    await box.close()

    again = Outbox(tmp_path)
    found = await again.open()
    await again.close()
    assert [n.notification_id for n in found.pending] == ["n-c"]
    assert found.pending[0].alert.alert_id == "c" and found.pending[0].created == 102.0
    assert found.nflog.get("a", "oncall") is not None  # delivered: told
    assert found.nflog.get("b", "oncall") is None  # dead: not told
    entry = found.nflog.get("d", "chat")
    assert entry is not None and entry.state == 3


class FailingSync:
    """File writes that work and syncs that fail, as on a dying disk."""

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")


async def test_a_log_that_cannot_be_written_keeps_notifying_from_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path, io=FailingSync())
    await box.open()
    first = box.add("n-1", "oncall", event("a"), 1.0)
    with caplog.at_level(logging.ERROR):
        await box.wait_durable(first)  # does not raise: a page matters more than the log
    assert box.failed and "kept in memory only" in caplog.text
    second = box.add("n-2", "oncall", event("b"), 2.0)
    assert second.seq == 0 and [n.notification_id for n in box.pending] == ["n-1", "n-2"]
    await box.wait_durable(second)
    box.settle(first, DELIVERED)
    assert [n.notification_id for n in box.pending] == ["n-2"]
    await box.close()
