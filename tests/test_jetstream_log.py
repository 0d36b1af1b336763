"""The JetStream log against real nats-server processes: the stream is the fence, records larger
than a message are split and joined, and nothing acknowledged is lost when a NATS server is
killed, alone (R1, restarted) or as the stream's leader in a three-server cluster (R3)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import api

from pipewarden.server.base.errors import FencedError, LogError
from pipewarden.server.storage.jetstream import JetStreamLog
from tests.support.natsserver import NatsServer, start_cluster

STREAM, SUBJECT = "PW_P007", "pipewarden.p.7"


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A client connection to it."""
    connection = await nats.connect(nats_server.url)
    try:
        yield connection
    finally:
        await connection.close()


async def _messages(nc: Client) -> list[tuple[int, dict[str, str], bytes]]:
    """Every message the stream holds: (stream sequence, headers, data)."""
    js = nc.jetstream()
    info = await js.stream_info(STREAM)
    if info.state.messages == 0:
        return []
    config = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, mem_storage=True)
    sub = await js.pull_subscribe(SUBJECT, stream=STREAM, config=config)
    out: list[tuple[int, dict[str, str], bytes]] = []
    while not out or out[-1][0] < info.state.last_seq:
        for m in await sub.fetch(1000, timeout=5):
            out.append((m.metadata.sequence.stream, dict(m.headers or {}), m.data))
    await sub.unsubscribe()
    return out


class GatedProxy:
    """A TCP proxy to a port whose client-to-server direction can be held: what a client sends
    meanwhile arrives when the gate opens, as from a process that was stopped."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.gate = asyncio.Event()
        self.gate.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> GatedProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_writer]
        for src, dst, gated in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pipe(src, dst, gated))
            self._tasks.add(task)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, gated: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if gated:
                    await self.gate.wait()
                dst.write(data)
                await dst.drain()
        dst.close()


async def _records(log: JetStreamLog, after: int = 0) -> list[tuple[int, bytes]]:
    return [entry async for batch in log.replay(after) for entry in batch]


@pytest.mark.timeout(30)
async def test_a_second_writer_fences_the_first(nc: Client) -> None:
    first = JetStreamLog(nc, STREAM, SUBJECT, owner="a")
    await first.open()
    kept = [first.append(f"a{i}".encode()) for i in range(50)]
    await first.wait_durable(kept[-1])
    # The first keeps appending, pipelined, while the second takes the stream.
    racing = [first.append(f"a-late{i}".encode()) for i in range(200)]
    second = JetStreamLog(nc, STREAM, SUBJECT, owner="b")
    await second.open()
    late = [first.append(f"a-after{i}".encode()) for i in range(20)]
    with pytest.raises(FencedError, match="another writer"):
        await first.wait_durable(late[-1])
    with pytest.raises(FencedError):  # and it stays failed
        first.append(b"again")
    assert racing  # some of these may have landed before the fence, none after it
    mine = second.append(b"b0")
    await second.wait_durable(mine)
    messages = await _messages(nc)
    fences = [seq for seq, headers, _ in messages if headers.get("Pw-Kind") == "fence"]
    second_fence = fences[-1]
    after_fence = [h["Nats-Msg-Id"] for seq, h, _ in messages if seq > second_fence]
    assert after_fence == [f"{second.writer_id}:{mine}"], "nothing of the first after the fence"
    assert [p for _, p in await _records(second)][:50] == [f"a{i}".encode() for i in range(50)]
    await first.close()
    await second.close()


@pytest.mark.timeout(30)
async def test_a_fenced_writers_late_appends_never_land_after_the_fence(
    nc: Client, nats_server: NatsServer
) -> None:
    """The hazard a sequence check alone misses: a stopped owner's pipelined appends expect
    N, N+1, ...; the new owner's fence takes N+1, so the one expecting N+1 would pass."""
    async with GatedProxy(nats_server.port) as proxy:
        old_nc = await nats.connect(f"nats://127.0.0.1:{proxy.port}")
        old = JetStreamLog(old_nc, STREAM, SUBJECT, owner="old", ack_timeout=5.0)
        await old.open()
        await old.wait_durable(old.append(b"kept"))
        proxy.gate.clear()  # the old owner stops: what it sends waits in the proxy
        late = [old.append(f"late{i}".encode()) for i in range(5)]
        await asyncio.sleep(0.1)
        new = JetStreamLog(nc, STREAM, SUBJECT, owner="new")
        await new.open()  # its fence takes the number the second late append expects
        assert new.last_seq == late[0]
        proxy.gate.set()
        with pytest.raises(FencedError):
            await old.wait_durable(late[-1])
        mine = new.append(b"new0")
        await new.wait_durable(mine)  # the new owner was not disturbed
        ids = [h.get("Nats-Msg-Id", "") for seq, h, _ in await _messages(nc) if seq >= late[0]]
        assert ids == [f"{new.writer_id}:{late[0]}", f"{new.writer_id}:{mine}"]
        assert [p for _, p in await _records(new)] == [b"kept", b"new0"]
        await old.close()
        await new.close()
        await old_nc.close()


@pytest.mark.timeout(30)
async def test_a_record_larger_than_a_message_is_split_and_joined(nc: Client) -> None:
    log = JetStreamLog(nc, STREAM, SUBJECT)
    await log.open()
    big = bytes(range(256)) * (nc.max_payload * 5 // 2 // 256)  # 2.5 messages' worth
    small = log.append(b"small")
    seq = log.append(big)
    after = log.append(b"after")
    await log.wait_durable(after)
    assert seq >= small + 3, "a split record takes the numbers of its pieces"
    assert await _records(log) == [(small, b"small"), (seq, big), (after, b"after")]
    assert await _records(log, small) == [(seq, big), (after, b"after")]
    await log.close()


@pytest.mark.timeout(30)
async def test_truncate_before_purges_the_stream(nc: Client) -> None:
    log = JetStreamLog(nc, STREAM, SUBJECT)
    await log.open()
    seqs = [log.append(f"r{i}".encode()) for i in range(10)]
    await log.wait_durable(seqs[-1])
    assert await log.truncate_before(seqs[4]) > 0
    held = await _messages(nc)
    assert [seq for seq, _, _ in held] == seqs[5:]
    assert log.first_seq == seqs[5]
    await log.close()


@pytest.mark.timeout(60)
async def test_kill_9_of_nats_loses_no_acknowledged_record(nats_server: NatsServer) -> None:
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await nats.connect(
        nats_server.url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        reconnected_cb=on_reconnect,
    )
    log = JetStreamLog(nc, STREAM, SUBJECT, ack_timeout=2.0)
    await log.open()
    acknowledged: list[tuple[int, bytes]] = []
    failed: list[LogError] = []
    enough = asyncio.Event()

    async def writer(n: int) -> None:
        # Pipelined: appends go on while earlier ones wait for their PubAck.
        for i in range(100_000):
            payload = f"w{n}-{i}".encode() * 20
            seq = log.append(payload)
            try:
                await log.wait_durable(seq)
            except LogError as e:
                failed.append(e)
                return
            acknowledged.append((seq, payload))
            if len(acknowledged) >= 2000:
                enough.set()

    async def append_all() -> None:
        with contextlib.suppress(LogError):
            await asyncio.gather(*(writer(n) for n in range(16)))

    appending = asyncio.create_task(append_all())
    await asyncio.wait_for(enough.wait(), 20)
    killed_at = time.monotonic()
    nats_server.kill()
    await asyncio.wait_for(appending, 10)
    assert failed, "appends after the kill fail (no silent loss)"
    assert time.monotonic() - killed_at < log.ack_timeout + 2, "within the deadline"
    with pytest.raises(LogError):
        log.append(b"the log stays failed")
    await log.close()

    nats_server.start()
    # The old connection reconnects and sends what it still buffered: records never
    # acknowledged, which may land (as a torn tail may survive a crash) but change nothing here.
    await asyncio.wait_for(reconnected.wait(), 10)
    await nc.close()
    nc = await nats.connect(nats_server.url)
    again = JetStreamLog(nc, STREAM, SUBJECT)
    await again.open()
    stored = dict(await _records(again))
    lost = [seq for seq, payload in acknowledged if stored.get(seq) != payload]
    assert not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}"
    await again.close()
    await nc.close()


async def _leader(nc: Client) -> str:
    info = await nc.jetstream().stream_info(STREAM)
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader


async def _open_when_ready(nc: Client, deadline: float) -> JetStreamLog:
    """A new owner's log, retried until the cluster (or the stream) has a leader."""
    while True:
        log = JetStreamLog(nc, STREAM, SUBJECT, replicas=3, ack_timeout=2.0)
        try:
            await log.open()
            return log
        except (LogError, nats.errors.Error) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"no stream leader before the deadline: {e}") from e
            await asyncio.sleep(0.2)


@pytest.mark.timeout(60)
async def test_r3_kill_9_of_the_stream_leader_loses_nothing_and_appends_resume(
    tmp_path: Path,
) -> None:
    servers = start_cluster(tmp_path / "cluster")
    try:
        urls = [s.url for s in servers]
        nc = await nats.connect(urls, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        log = await _open_when_ready(nc, time.monotonic() + 20)
        acknowledged: list[tuple[int, bytes]] = []
        for round_ in range(20):
            seqs = [
                (log.append(f"{round_}-{i}".encode()), f"{round_}-{i}".encode()) for i in range(50)
            ]
            await log.wait_durable(seqs[-1][0])
            acknowledged += seqs
        leader = await _leader(nc)
        victim = next(s for s in servers if s.name == leader)
        # Appends in flight when the leader dies: they may fail, but none is acknowledged falsely.
        pending = [(log.append(f"late-{i}".encode()), f"late-{i}".encode()) for i in range(200)]
        killed_at = time.monotonic()
        victim.kill()
        try:
            await log.wait_durable(pending[-1][0])
            acknowledged += pending
            resumed = log
        except LogError:
            print(f"R3: the log failed {time.monotonic() - killed_at:.2f}s after the kill")
            await log.close()
            resumed = await _open_when_ready(nc, killed_at + 20)
        seq = resumed.append(b"after the failover")
        await resumed.wait_durable(seq)
        resume_seconds = time.monotonic() - killed_at
        acknowledged.append((seq, b"after the failover"))
        print(f"R3: appends resumed {resume_seconds:.2f}s after kill -9 of the stream leader")
        assert resume_seconds < 20  # NATS elects a new leader in 4-9 s (its Raft timeouts)
        assert await _leader(nc) != leader
        stored = dict(await _records(resumed))
        lost = [s for s, payload in acknowledged if stored.get(s) != payload]
        assert not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}"
        await resumed.close()
        await nc.close()
    finally:
        for s in servers:
            s.stop()
