"""Property test: whatever happened to the outbox (notifications written, delivered, given up on,
notes, compactions), reopening it gives back exactly what the process had in memory: the
notifications still pending, in order, and what each receiver was told."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipewarden.notifiers.nflog import NotificationLog
from pipewarden.notifiers.notification import state_of
from pipewarden.notifiers.outbox import DEAD, DELIVERED, Outbox
from tests.support.alert_events import event

ALERTS = ["a0"]
RECEIVERS = ["oncall", "chat"]
KINDS = ["fired", "escalated", "acknowledged", "resolved"]

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(ALERTS),
            st.sampled_from(RECEIVERS),
            st.sampled_from(["critical", "high", "medium"]),
            st.sampled_from(KINDS),
        ),
        st.tuples(st.just("deliver"), st.integers(0, 20)),
        st.tuples(st.just("dead"), st.integers(0, 20)),
        st.tuples(st.just("note"), st.sampled_from(ALERTS), st.sampled_from(RECEIVERS)),
        st.tuples(st.just("compact")),
        st.tuples(st.just("reopen")),
    ),
    max_size=60,
)


def snapshot(box: Outbox, nflog: NotificationLog) -> tuple[Any, Any]:
    pending = [(n.notification_id, n.receiver, n.alert.alert_id, n.created) for n in box.pending]
    told = sorted((a, r, e.severity, e.state, round(e.sent_at, 6)) for a, r, e in nflog.entries())
    return pending, told


async def run(ops: list[tuple[Any, ...]], directory: Path) -> None:
    def new() -> Outbox:
        # Small segments, so that compaction deletes some.
        return Outbox(directory, segment_bytes=2048, compact_bytes=4096)

    box = new()
    nflog = (await box.open()).nflog
    clock = 1000.0
    for i, op in enumerate(ops):
        clock += 1.25
        if op[0] == "add":
            _, alert_id, receiver, severity, kind = op
            e = event(alert_id, severity, kind)
            n = box.add(f"n{i}", receiver, e, clock)
            nflog.record(alert_id, receiver, e.alert.severity, state_of(e), clock)
            await box.wait_durable(n)
        elif op[0] in ("deliver", "dead") and box.pending:
            n = box.pending[op[1] % len(box.pending)]
            box.settle(n, DELIVERED if op[0] == "deliver" else DEAD)
            if op[0] == "dead":
                box.untell(nflog, n)
        elif op[0] == "note":
            _, alert_id, receiver = op
            box.note(alert_id, receiver, 3, 3, clock)
            nflog.record(alert_id, receiver, 3, 3, clock)
        elif op[0] == "compact":
            await box.compact(nflog)
        elif op[0] == "reopen":
            before = snapshot(box, nflog)
            await box.close()
            box = new()
            nflog = (await box.open()).nflog
            assert snapshot(box, nflog) == before
    before = snapshot(box, nflog)
    await box.close()
    box = new()
    nflog = (await box.open()).nflog
    await box.close()
    assert snapshot(box, nflog) == before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
# The newer of two pending notifications given up on: the entry goes back to the older one.
@example(
    [
        ("add", "a0", "oncall", "critical", "fired"),
        ("add", "a0", "oncall", "critical", "resolved"),
        ("dead", 1),
        ("compact",),
    ]
)
# A note over a pending notification, then a compaction: the note still wins after replay.
@example([("add", "a0", "oncall", "high", "fired"), ("note", "a0", "oncall"), ("compact",)])
# Compactions whose copies share a segment with older records: the order still holds.
@example(
    [
        *[("add", "a0", "oncall", "critical", "fired")] * 5,
        ("compact",),
        ("add", "a0", "oncall", "critical", "fired"),
        ("compact",),
        ("reopen",),
    ]
)
def test_reopening_the_outbox_gives_back_what_was_in_memory(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(ops, Path(tmp)))
