"""The event log on NATS JetStream: one stream per partition, and the stream itself the fence.

Layout. A partition's log is one JetStream stream (name and subject given by the caller, e.g.
`PW_P007` on `pipewarden.p.7`), file storage, R1 or R3 (`replicas`). A record is one message;
its sequence number in the log is its sequence number in the stream, so numbers are unique and
increasing but not contiguous: fence records and the pieces of a split record take numbers that
`replay` never yields.

Durability. `append` only queues a record and returns its number; a writer task publishes the
queue pipelined (replies to the log's own inbox, at most MAX_IN_FLIGHT awaited), and an acker
task takes the PubAcks in order: a record is durable once JetStream's PubAck for it (and for
every record before it) has arrived, which at R3 means a majority of the servers stored it.
What the NATS servers do with it then (`sync_interval`) is their configuration's business.

Fencing. Exactly one writer may append, and the stream decides who: every message carries
`Nats-Expected-Last-Sequence` (the stream sequence of the message before it) and
`Nats-Msg-Id` / `Nats-Expected-Last-Msg-Id` (an id naming this writer and that sequence, and the
id of the message before it). `open()` makes this log the owner by appending a fence record (a
message whose `Pw-Kind` header is `fence`) expected to follow the stream's last message (tried
again while another writer's appends make it miss). From then on a previous owner's next append
is refused by the server, and the log raises FencedError and stays failed: the owner must drop
the partition. The message id matters for pipelining: a
fenced writer's in-flight messages expect sequences N, N+1, ... and the one expecting the fence's
own sequence would pass a sequence check alone; it cannot also name the fence's message id.
(The expected-id check uses the stream's memory of its last message id, which a NATS server
rebuilds after a restart only within the stream's duplicate window: an owner idle for longer
than that across a restart of every NATS server is refused once and must reopen.)

Failure. Any refusal, an append that gets no PubAck within `ack_timeout` (NATS unreachable: the
client reconnects and re-sends what it buffered meanwhile, but the log does not wait past the
deadline), or a closed connection fails the log: every waiter gets the LogError, every later
append raises it, and `on_failure` is told once. Nothing that may be missing is acknowledged,
and nothing appended after the first failure is counted as durable.

Size. A record larger than the connection's `max_payload` (1 MiB by default, from the server's
INFO) minus room for headers is split into pieces (`Pw-Part: i/n`), published back to back in the
same chain; the record's number is its last piece's, so `wait_durable` covers them all, and
`replay` joins them again.

Truncation and numbering. `truncate_before(seq)` purges the stream below `seq + 1` (a purge
keeps the stream's last sequence and last message id, so the chain goes on). `start_after(seq)`
with `seq` beyond the stream's last sequence (a snapshot ahead of a stream that lost its tail,
e.g. R1 without sync) purges up to `seq`, which moves the stream's sequence on, so that no new
record takes a number the snapshot already covers. `replay(after)` reads the stream from
`after + 1` to the last message acknowledged when it starts (at a start: the fence) through an
ephemeral pull consumer, in batches, and skips fence records; while a cluster elects leaders
after a server died it tries again, for up to `read_timeout`.

The connection is the caller's (one per node, shared by its partitions' logs); connect it with
reconnection on (nats-py's default). What the client buffered while disconnected is sent on
reconnection and acknowledged as usual; a message lost with a dropped connection gets no PubAck,
and the log fails at its deadline (the partition reopens: a new fence, a replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from pipewarden.server.base import tasks
from pipewarden.server.base.errors import CorruptLogError, FencedError, LogError

__all__ = ["JetStreamLog"]

log = logging.getLogger(__name__)

KIND = "Pw-Kind"
"""Header naming a record of the log's own: `fence` (replay skips it)."""
PART = "Pw-Part"
"""Header `i/n` on the pieces of a record split to fit the server's max_payload."""
HEADER_ROOM = 1024
"""Bytes of a message kept for its headers when a record is split."""
REPLAY_BATCH = 256
"""Messages fetched at once by `replay` (a record is a whole ingest request: keep memory low)."""
MAX_IN_FLIGHT = 4096
"""Messages published and not yet acknowledged, at most (the writer waits beyond)."""
WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_MSG_ID = 10070
_T = TypeVar("_T")
_NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)


@dataclass
class _Message:
    seq: int
    payload: bytes
    deadline: float
    part: str | None = None


class JetStreamLog:
    """The event log as a JetStream stream. See the module docstring for the design."""

    def __init__(
        self,
        connection: Client,
        stream: str,
        subject: str,
        *,
        replicas: int = 1,
        ack_timeout: float = 10.0,
        read_timeout: float = 30.0,
        owner: str = "",
        on_failure: Callable[[LogError], None] | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        self.connection = connection
        self.stream = stream
        self.subject = subject
        self.replicas = replicas
        self.ack_timeout = ack_timeout
        """Seconds an append may wait for its PubAck before the log fails."""
        self.read_timeout = read_timeout
        """Seconds `replay` keeps trying to read (a cluster electing leaders) before LogError."""
        self.on_failure = on_failure
        self.writer_id = f"{owner or 'pw'}-{secrets.token_hex(6)}"
        """Names this log's messages (`Nats-Msg-Id` is `<writer_id>:<seq>`)."""
        # Its API requests (stream info, purge, the fence) wait no longer than an append.
        self._js = connection.jetstream(timeout=ack_timeout)
        self._first = 1
        self._last = 0  # numbered (appended)
        self._durable = 0  # acknowledged, in order
        self._bytes = 0
        self._prev_seq = 0  # the chain: the last message published ...
        self._prev_id = ""  # ... and its id
        self._advance_to = 0  # start_after beyond the stream: purge up to it first
        self._queue: deque[_Message] = deque()
        self._inflight: deque[tuple[_Message, asyncio.Future[int]]] = deque()
        self._pending: dict[int, asyncio.Future[int]] = {}  # by the reply subject's number
        self._room = asyncio.Event()
        self._inbox = ""
        self._replies: Subscription | None = None
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._acks = asyncio.Event()
        self._error: LogError | None = None
        self._opened = False
        self._closing = False
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None

    # -- the EventLog interface ------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The number of the last appended record (or fence); 0 when the stream is empty."""
        return self._last

    @property
    def durable_seq(self) -> int:
        """The number up to which JetStream has acknowledged everything."""
        return self._durable

    @property
    def first_seq(self) -> int:
        """The stream's first sequence still held (last_seq + 1 when empty)."""
        return self._first

    async def open(self) -> None:
        """Create the stream if it does not exist, and become its only writer by appending a
        fence record after its last message. A writer that appends meanwhile makes the fence
        miss; it is tried again (the caller has decided this node owns the partition) until
        `ack_timeout` has passed, then FencedError."""
        if self._opened:
            return
        deadline = time.monotonic() + self.ack_timeout
        while True:
            try:
                state = await self._ensure_stream()
                fence = state.last_seq + 1
                ack = await self._js.publish(
                    self.subject,
                    self.writer_id.encode(),
                    timeout=self.ack_timeout,
                    stream=self.stream,
                    headers={
                        KIND: "fence",
                        "Nats-Msg-Id": self._id(fence),
                        "Nats-Expected-Last-Sequence": str(state.last_seq),
                    },
                )
                break
            except nats.js.errors.APIError as e:
                if e.err_code != WRONG_LAST_SEQUENCE:
                    raise LogError(f"stream {self.stream} cannot be opened: {e}") from e
                if time.monotonic() > deadline:
                    raise FencedError(
                        f"stream {self.stream}: another writer kept appending while this one "
                        f"tried to fence it for {self.ack_timeout}s ({e.description})"
                    ) from e
            except _NATS_ERRORS as e:
                raise LogError(f"stream {self.stream} cannot be opened: {e!r}") from e
        if ack.seq != fence or ack.duplicate:
            raise LogError(f"stream {self.stream}: the fence took sequence {ack.seq}, not {fence}")
        self._first = state.first_seq if state.messages else fence
        self._last = self._durable = self._prev_seq = fence
        self._prev_id = self._id(fence)
        self._bytes = state.bytes
        self._inbox = self.connection.new_inbox()
        try:
            self._replies = await self.connection.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        except _NATS_ERRORS as e:
            raise LogError(f"stream {self.stream} cannot be opened: {e!r}") from e
        self._opened = True
        self._writer = tasks.spawn(self._write_loop(), name=f"jetstream-writer-{self.stream}")
        self._acker = tasks.spawn(self._ack_loop(), name=f"jetstream-acker-{self.stream}")

    def append(self, payload: bytes) -> int:
        """Queue a record; it is durable once `wait_durable` for its number returns."""
        if self._error is not None:
            raise self._error
        if self._closing or not self._opened:
            raise LogError(
                f"stream {self.stream}: the log is {'closed' if self._opened else 'not open'}"
            )
        deadline = time.monotonic() + self.ack_timeout
        room = self.connection.max_payload - HEADER_ROOM
        if len(payload) <= room:
            self._last += 1
            self._queue.append(_Message(self._last, payload, deadline))
        else:
            view = memoryview(payload)
            count = -(-len(payload) // room)
            for i in range(count):
                self._last += 1
                piece = bytes(view[i * room : (i + 1) * room])
                self._queue.append(_Message(self._last, piece, deadline, f"{i + 1}/{count}"))
        self._bytes += len(payload)
        self._wake.set()
        return self._last

    async def wait_durable(self, seq: int) -> None:
        """Return once JetStream acknowledged everything up to `seq`; raise the log's LogError
        (FencedError when another writer took the stream) if it cannot."""
        if seq <= self._durable:
            return
        if self._error is not None:
            raise self._error
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        await future

    async def replay(self, after: int) -> AsyncIterator[list[tuple[int, bytes]]]:
        """The records numbered above `after` that JetStream has acknowledged when it starts,
        in order, in batches; fence records skipped, split records joined."""
        end = self._durable
        start = max(after + 1, self._first)
        if start > end:
            return
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        sub = await self._retrying(
            f"cannot create a consumer from {start}",
            lambda: self._js.pull_subscribe(self.subject, stream=self.stream, config=config),
        )
        pieces: list[bytes] = []
        seq = after
        try:
            while seq < end:
                msgs = await self._retrying(
                    f"cannot be read after {seq}",
                    lambda: sub.fetch(REPLAY_BATCH, timeout=self.ack_timeout),
                )
                batch: list[tuple[int, bytes]] = []
                for msg in msgs:
                    seq = msg.metadata.sequence.stream
                    if seq > end:
                        break
                    record = self._record(msg, seq, pieces)
                    if record is not None:
                        batch.append((seq, record))
                if batch:
                    yield batch
        finally:
            with contextlib.suppress(*_NATS_ERRORS):
                await sub.unsubscribe()

    async def _retrying(self, problem: str, request: Callable[[], Awaitable[_T]]) -> _T:
        """`request()`, tried again until `read_timeout` has passed: after a NATS server died,
        the cluster elects new leaders (of the stream and of the cluster's metadata) first."""
        deadline = time.monotonic() + self.read_timeout
        while True:
            try:
                return await request()
            except _NATS_ERRORS as e:
                if time.monotonic() > deadline:
                    raise LogError(f"stream {self.stream} {problem}: {e!r}") from e
                log.info("stream %s %s (%r); trying again", self.stream, problem, e)
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Wait (up to the ack deadline) until what was appended is acknowledged, then stop the
        writer. The connection stays open: it is the caller's. Idempotent."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        for task in (self._writer, self._acker):
            if task is not None:
                await asyncio.wait({task})
        self._closed = True
        self._fail_inflight()
        if self._replies is not None:
            with contextlib.suppress(*_NATS_ERRORS):
                await self._replies.unsubscribe()

    def start_after(self, seq: int) -> None:
        """Number the next record at least `seq + 1`. Beyond the stream's last sequence (a
        snapshot ahead of a stream that lost its tail), the writer first purges the stream up to
        `seq`, which moves the stream's sequence on. Only before anything is appended."""
        if seq <= self._last:
            return
        assert not self._queue, "start_after after appends"
        log.warning(
            "stream %s ends at %d but the snapshot covers up to %d: the stream lost records it "
            "had acknowledged (R1 without sync?); numbering goes on from %d",
            self.stream,
            self._last,
            seq,
            seq + 1,
        )
        self._advance_to = seq
        self._last = seq
        self._first = seq + 1
        self._wake.set()

    async def truncate_before(self, seq: int) -> int:
        """Purge the stream's messages numbered `seq` or less (no further than what is durable);
        return how many sequence numbers were dropped."""
        upto = min(seq, self._durable)
        if upto < self._first:
            return 0
        try:
            await self._js.purge_stream(self.stream, seq=upto + 1)
            info = await self._js.stream_info(self.stream)
        except _NATS_ERRORS as e:
            raise LogError(f"stream {self.stream} cannot be purged: {e!r}") from e
        dropped = upto + 1 - self._first
        self._first = upto + 1
        self._bytes = info.state.bytes
        return dropped

    def size_bytes(self) -> int:
        """Bytes the stream held at open or the last purge, plus what was appended since."""
        return self._bytes

    # -- the stream ------------------------------------------------------------------------------

    async def _ensure_stream(self) -> api.StreamState:
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            config = api.StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                storage=api.StorageType.FILE,
                num_replicas=self.replicas,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.NEW,
                duplicate_window=120.0,
            )
            # Two nodes creating the same stream at once both succeed: the config is the same.
            info = await self._js.add_stream(config)
        subjects = info.config.subjects or []
        if self.subject not in subjects:
            raise LogError(
                f"stream {self.stream} exists with subjects {subjects}, not {self.subject!r}"
            )
        if info.config.num_replicas != self.replicas:
            log.warning(
                "stream %s has %s replicas, not the %d configured; keeping them",
                self.stream,
                info.config.num_replicas,
                self.replicas,
            )
        return info.state

    def _id(self, seq: int) -> str:
        return f"{self.writer_id}:{seq}"

    def _record(self, msg: Msg, seq: int, pieces: list[bytes]) -> bytes | None:
        """The record `msg` completes, or None (a fence, or a piece before the last)."""
        headers = msg.headers or {}
        if headers.get(KIND) == "fence":
            if pieces:
                raise CorruptLogError(f"stream {self.stream}: a split record ends at fence {seq}")
            return None
        part = headers.get(PART)
        if part is None:
            if pieces:
                raise CorruptLogError(f"stream {self.stream}: a split record ends at {seq}")
            return msg.data
        index, _, count = part.partition("/")
        if int(index) != len(pieces) + 1:
            raise CorruptLogError(
                f"stream {self.stream}: piece {part} at {seq} follows {len(pieces)} piece(s)"
            )
        pieces.append(msg.data)
        if index != count:
            return None
        record = b"".join(pieces)
        pieces.clear()
        return record

    # -- the writer and the acker ----------------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        """A PubAck (or the server's refusal) for the message its reply subject names."""
        token = msg.subject.rpartition(".")[2]
        future = self._pending.pop(int(token), None) if token.isdigit() else None
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(LogError(f"stream {self.stream}: no JetStream responders"))
            return
        try:
            reply = json.loads(msg.data)
        except ValueError as e:
            future.set_exception(LogError(f"stream {self.stream}: unreadable PubAck: {e}"))
            return
        error = reply.get("error")
        if error is not None:
            future.set_exception(
                nats.js.errors.APIError(
                    code=error.get("code"),
                    err_code=error.get("err_code"),
                    description=error.get("description"),
                )
            )
        else:
            future.set_result(int(reply.get("seq", 0)))

    async def _write_loop(self) -> None:
        """Publish the queue in order, pipelined, each message chained to the one before.

        The replies come to this log's own inbox (nats-py's publish_async would do the same,
        but its handler raises a refusal instead of handing it to the waiting future)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._advance_to:
                try:
                    await self._js.purge_stream(self.stream, seq=self._advance_to + 1)
                except _NATS_ERRORS as e:
                    self._fail(LogError(f"stream {self.stream} cannot be moved on: {e!r}"))
                    return
                self._prev_seq = self._durable = self._advance_to
                self._advance_to = 0
            while self._queue and self._error is None:
                if len(self._inflight) >= MAX_IN_FLIGHT:
                    self._room.clear()
                    await self._room.wait()
                    continue
                message = self._queue.popleft()
                seq = message.seq
                headers = {
                    "Nats-Msg-Id": self._id(seq),
                    "Nats-Expected-Last-Sequence": str(self._prev_seq),
                    "Nats-Expected-Last-Msg-Id": self._prev_id,
                }
                if message.part is not None:
                    headers[PART] = message.part
                future: asyncio.Future[int] = loop.create_future()
                self._pending[seq] = future
                self._inflight.append((message, future))
                self._acks.set()
                try:
                    await self.connection.publish(
                        self.subject,
                        message.payload,
                        reply=f"{self._inbox}.{seq}",
                        headers=headers,
                    )
                except _NATS_ERRORS as e:
                    self._fail(LogError(f"stream {self.stream}: record {seq} not sent: {e!r}"))
                    return
                self._prev_seq, self._prev_id = seq, headers["Nats-Msg-Id"]
            if self._error is not None or (self._closing and not self._queue):
                self._acks.set()
                return

    async def _ack_loop(self) -> None:
        """Take the PubAcks in order; release waiters; fail the log on the first refusal."""
        while True:
            if not self._inflight:
                writer_done = self._writer is None or self._writer.done()
                if self._error is not None or (self._closing and writer_done):
                    return
                self._acks.clear()
                await self._acks.wait()
                continue
            message, future = self._inflight[0]
            remaining = message.deadline - time.monotonic()
            if not future.done():
                await asyncio.wait({future}, timeout=max(remaining, 0))
            if self._error is not None:
                return
            if not future.done():
                self._fail(self._timeout(message.seq))
                return
            self._inflight.popleft()
            self._room.set()
            error = future.exception()
            if error is not None:
                self._fail(self._refused(message.seq, error))
                return
            stored = future.result()
            if stored != message.seq:
                self._fail(
                    LogError(f"stream {self.stream}: record {message.seq} was stored at {stored}")
                )
                return
            if message.part is None or message.part.split("/")[0] == message.part.split("/")[1]:
                self._durable = message.seq
                waiters = self._waiters
                while waiters and waiters[0][0] <= self._durable:
                    _, waiter = waiters.popleft()
                    if not waiter.done():
                        waiter.set_result(None)

    def _timeout(self, seq: int) -> LogError:
        return LogError(
            f"stream {self.stream}: no PubAck for record {seq} within {self.ack_timeout}s "
            "(NATS unreachable or the stream has no leader); records from "
            f"{self._durable + 1} on were not acknowledged"
        )

    def _refused(self, seq: int, error: BaseException) -> LogError:
        if isinstance(error, nats.js.errors.APIError) and error.err_code in (
            WRONG_LAST_SEQUENCE,
            WRONG_LAST_MSG_ID,
        ):
            return FencedError(
                f"stream {self.stream}: another writer has taken the log (record {seq} refused: "
                f"{error.description}); this node no longer owns it, records from "
                f"{self._durable + 1} on were not acknowledged"
            )
        return LogError(f"stream {self.stream}: record {seq} refused: {error!r}")

    def _fail(self, error: LogError) -> None:
        if self._error is not None:
            return
        self._error = error
        if self.on_failure is None:  # else the owner says it, once
            log.error("%s", error)
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        self._queue.clear()
        self._fail_inflight()
        self._wake.set()
        self._acks.set()
        if self.on_failure is not None:
            self.on_failure(error)

    def _fail_inflight(self) -> None:
        """Forget the PubAcks still awaited (retrieving what they end with, so that asyncio
        does not report it)."""
        while self._inflight:
            _, future = self._inflight.popleft()
            future.add_done_callback(_retrieve)
        self._pending.clear()


def _retrieve(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()
