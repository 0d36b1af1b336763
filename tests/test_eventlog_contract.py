"""The EventLog seam's contract, held by every log alike: the in-memory one, the write-ahead log
on disk and the JetStream log (against a real nats-server started on a free port)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from pipewarden.server.storage.eventlog import EventLog, MemoryLog
from pipewarden.server.storage.jetstream import JetStreamLog
from pipewarden.server.storage.wal import WriteAheadLog
from tests.support.natsserver import NatsServer

pytestmark = pytest.mark.timeout(60)

Factory = Callable[[], EventLog]
"""A new log object over the same storage (for the memory log: the same object)."""


@pytest.fixture
async def nats_connection(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A client connection to it."""
    nc = await nats.connect(nats_server.url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture(params=["memory", "wal", "jetstream"])
def make_log(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Each kind of log, as a factory of log objects over one storage."""
    if request.param == "memory":
        memory = MemoryLog()
        return lambda: memory
    if request.param == "wal":
        return lambda: WriteAheadLog(tmp_path / "wal", segment_bytes=4096)
    nc: Client = request.getfixturevalue("nats_connection")
    return lambda: JetStreamLog(nc, "PW_P007", "pipewarden.p.7")


async def _all(log: EventLog, after: int = 0) -> list[tuple[int, bytes]]:
    return [entry async for batch in log.replay(after) for entry in batch]


async def _append(log: EventLog, payloads: list[bytes]) -> list[int]:
    seqs = [log.append(p) for p in payloads]
    await log.wait_durable(seqs[-1])
    return seqs


PAYLOADS = [f"record {i}".encode() * 40 for i in range(30)]


async def test_appended_records_replay_in_order_with_the_numbers_append_gave(
    make_log: Factory,
) -> None:
    log = make_log()
    await log.open()
    seqs = await _append(log, PAYLOADS)
    assert seqs == sorted(set(seqs)), "numbers increase"
    assert log.last_seq == seqs[-1]
    assert await _all(log) == list(zip(seqs, PAYLOADS, strict=True))
    await log.close()


async def test_replay_after_a_number_yields_only_what_follows_it(make_log: Factory) -> None:
    log = make_log()
    await log.open()
    seqs = await _append(log, PAYLOADS)
    assert await _all(log, seqs[9]) == list(zip(seqs[10:], PAYLOADS[10:], strict=True))
    assert await _all(log, seqs[-1]) == []
    await log.close()


async def test_reopening_replays_the_same_and_numbers_on(make_log: Factory) -> None:
    log = make_log()
    await log.open()
    seqs = await _append(log, PAYLOADS)
    await log.close()
    again = make_log()
    await again.open()
    assert await _all(again) == list(zip(seqs, PAYLOADS, strict=True))
    more = await _append(again, [b"after the reopen"])
    assert more[0] > seqs[-1]
    await again.close()


async def test_start_after_numbers_the_next_record_past_a_snapshot(make_log: Factory) -> None:
    log = make_log()
    await log.open()
    seqs = await _append(log, PAYLOADS[:3])
    snapshot_seq = seqs[-1] + 100
    log.start_after(snapshot_seq)
    [seq] = await _append(log, [b"after the snapshot"])
    assert seq > snapshot_seq
    assert await _all(log, snapshot_seq) == [(seq, b"after the snapshot")]
    log.start_after(seqs[0])  # behind the log: nothing changes
    assert log.last_seq == seq
    await log.close()


async def test_truncate_before_keeps_everything_after_the_snapshot(make_log: Factory) -> None:
    log = make_log()
    await log.open()
    seqs = await _append(log, PAYLOADS)
    await log.truncate_before(seqs[19])
    assert log.first_seq <= seqs[20]
    assert await _all(log, seqs[19]) == list(zip(seqs[20:], PAYLOADS[20:], strict=True))
    more = await _append(log, [b"after the truncation"])
    await log.close()
    again = make_log()
    await again.open()
    assert again.first_seq <= seqs[20]
    assert await _all(again, seqs[19]) == [
        *zip(seqs[20:], PAYLOADS[20:], strict=True),
        (more[0], b"after the truncation"),
    ]
    await again.close()


async def test_close_is_idempotent_and_keeps_what_was_appended(make_log: Factory) -> None:
    log = make_log()
    await log.open()
    seqs = [log.append(p) for p in PAYLOADS[:5]]  # not waited for: close makes them durable
    await log.close()
    await log.close()
    again = make_log()
    await again.open()
    assert await _all(again) == list(zip(seqs, PAYLOADS[:5], strict=True))
    await again.close()


async def test_size_grows_with_what_is_appended(make_log: Factory) -> None:
    log = make_log()
    await log.open()
    before = log.size_bytes()
    await _append(log, PAYLOADS)
    assert log.size_bytes() >= before + sum(len(p) for p in PAYLOADS)
    await log.close()
