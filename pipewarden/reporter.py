"""Buffered reporting for pipeline runners: `report()` never blocks; a background sender batches
executions by size and time over one open StreamIngest stream.

Delivery: a batch stays unacknowledged until the server answers it, which it does only once the
batch is durable. When the stream breaks (the server restarts, the network drops), the sender
puts the unacknowledged batch back at the front of the buffer, waits with exponential backoff
(with jitter) and sends it again on a new stream. Sending again is safe: `execution_id` makes
ingestion idempotent, so a run the server had already counted is answered as a duplicate.

When full: at most `max_buffered` executions wait. Beyond that the oldest waiting one is dropped,
counted in `stats.dropped`, and a warning is logged once until the buffer has room again; so a
Pipewarden that is down costs the pipeline bounded memory and never a wait. Only `flush()` and
`close()` wait, each at most its timeout; the sync `Reporter` closes itself at interpreter exit.

A stream idle for `idle_timeout` is closed and opened again at the next report, so an idle
runner holds no stream open for a server that is stopping.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from pipewarden.runs import Tracker
from pipewarden.v1 import service_pb2, service_pb2_grpc
from pipewarden.v1.execution_pb2 import PipelineExecution

__all__ = [
    "RETRY_METADATA",
    "AsyncReporter",
    "Reporter",
    "ReporterStats",
    "retriable",
    "retry_hint",
]

log = logging.getLogger(__name__)

_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # not in the typing stubs
_FATAL = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


RETRY_METADATA = "pipewarden-retry-ms"
"""Trailing metadata the server adds to a RESOURCE_EXHAUSTED that is a matter of load (a rate
limit, a cap on streams, the ingest queue): the milliseconds after which to send again."""


def retry_hint(metadata: Iterable[Any] | None) -> float | None:
    """The seconds after which the server asked to be called again (in a call's trailing
    metadata), or None."""
    for key, value in metadata or ():
        if key == RETRY_METADATA:
            with contextlib.suppress(ValueError):
                return max(0.0, float(value.decode() if isinstance(value, bytes) else value) / 1000)
    return None


def retriable(code: grpc.StatusCode, hint: float | None = None) -> bool:
    """Whether a batch refused with `code` may succeed when sent again. Not when the batch
    itself is refused (malformed or too large) or the server cannot ingest at all; an
    authentication error is retried, since a token can be fixed on the server's side; and a
    RESOURCE_EXHAUSTED that came with a retry hint (`hint`: the server is busy) is."""
    return code not in _FATAL or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None)


@dataclass
class ReporterStats:
    """What a reporter has done so far."""

    reported: int = 0
    """Executions handed to report()."""
    accepted: int = 0
    """Newly counted by the server."""
    duplicates: int = 0
    """Already counted (a resend after a lost answer, or a runner's own repeat)."""
    running: int = 0
    """RUNNING events the server took."""
    rejected: int = 0
    """Refused by the server as invalid (the reason is logged)."""
    dropped: int = 0
    """Dropped unsent: the oldest, when the buffer was full, or a batch the server refused
    whole."""
    retries: int = 0
    """Streams that broke and were opened again."""


class AsyncReporter(Tracker):
    """The buffered reporter, for asyncio code. `report()` may be called from any thread.

    async with AsyncReporter("127.0.0.1:50051", team="payments") as reporter:
        reporter.report(execution(...))
    """

    def __init__(
        self,
        target: str,
        *,
        team: str = "",
        token: str | None = None,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_buffered: int = 100_000,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        idle_timeout: float = 30.0,
        channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
    ) -> None:
        super().__init__(team)
        self.target = target
        self.batch_size = batch_size
        """Most executions in one request."""
        self.flush_interval = flush_interval
        """Longest an execution waits for its batch to fill before it is sent anyway."""
        self.max_buffered = max_buffered
        """Most executions waiting to be sent; beyond it the oldest is dropped."""
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_timeout = idle_timeout
        self.stats = ReporterStats()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel_factory = channel_factory or grpc.aio.insecure_channel
        self._buffer: deque[PipelineExecution] = deque()
        self._lock = threading.Lock()  # guards _buffer and stats.dropped across threads
        self._in_flight: list[PipelineExecution] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._flushing = 0
        self._closing = False
        self._closed = False
        self._full_warned = False
        self._last_error: str | None = None

    # -- the runner's side -------------------------------------------------------------------

    def report(self, execution: PipelineExecution) -> None:
        """Queue one execution; never blocks (see the module docstring for a full buffer)."""
        with self._lock:
            self.stats.reported += 1
            buffer = self._buffer
            if len(buffer) >= self.max_buffered:
                buffer.popleft()
                self.stats.dropped += 1
                if not self._full_warned:
                    self._full_warned = True
                    log.warning(
                        "pipewarden reporter: %d executions wait unsent (is %s down?); dropping "
                        "the oldest from now on",
                        len(buffer),
                        self.target,
                    )
            buffer.append(execution)
            wake = len(buffer) == 1 or len(buffer) >= self.batch_size
        if wake:
            self._poke()

    @property
    def pending(self) -> int:
        """Executions not yet acknowledged (waiting or sent)."""
        return len(self._buffer) + len(self._in_flight)

    async def start(self) -> None:
        """Start the sender (report() works before it; nothing is sent until then)."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._drained = asyncio.Event()
            self._stopping = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="pipewarden-reporter")
            self._poke()

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - as Reporter
        """Wait until everything reported so far is acknowledged, at most `timeout` seconds;
        True when it was."""
        await self.start()
        assert self._drained is not None
        self._flushing += 1
        self._poke()
        try:
            async with asyncio.timeout(timeout):
                while self.pending:
                    self._drained.clear()
                    await self._drained.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._flushing -= 1

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - as Reporter
        """Flush for at most `timeout` seconds, then stop. What is still unsent is counted in
        `stats.dropped` and logged. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task = self._task
        if task is not None:
            await self.flush(timeout)
            self._closing = True
            assert self._stopping is not None
            self._stopping.set()
            self._poke()
            # The sender ends its stream and closes the channel; one stuck on the network is
            # cancelled (and the channel's close cancels its call).
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        left = self.pending
        if left:
            self.stats.dropped += left
            log.warning("pipewarden reporter closed with %d executions unsent", left)

    async def __aenter__(self) -> AsyncReporter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the sender --------------------------------------------------------------------------

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    async def _run(self) -> None:
        backoff = self.backoff_initial
        hint: float | None = None  # the wait the server asked for, when it did
        async with self._channel_factory(self.target) as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            while not self._closing:
                if not await self._wait_for_work(None):
                    continue
                try:
                    await self._stream(stub)
                    backoff = self.backoff_initial
                except grpc.aio.AioRpcError as e:
                    hint = retry_hint(e.trailing_metadata())
                    self._broken(e.code(), e.details() or "", hint)
                except Exception as e:  # a bug here must not stop reporting for good
                    hint = None
                    log.exception("pipewarden reporter: unexpected error; retrying")
                    self._broken(grpc.StatusCode.UNKNOWN, repr(e))
                else:
                    continue
                assert self._stopping is not None
                wait = backoff * random.uniform(0.5, 1.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, hint or 0.0)):
                        await self._stopping.wait()
                backoff = min(backoff * 2, self.backoff_max)

    async def _wait_for_work(self, idle: float | None) -> bool:
        """Wait until something is buffered; False after `idle` seconds with nothing, or when
        closing."""
        assert self._wake is not None and self._drained is not None
        while not self._buffer or self._closing:
            if self._closing:
                return False
            self._drained.set()
            self._wake.clear()
            if self._buffer:
                break
            try:
                async with asyncio.timeout(idle):
                    await self._wake.wait()
            except TimeoutError:
                return False
        return True

    async def _next_batch(self) -> list[PipelineExecution] | None:
        """The next batch: once batch_size executions wait, or the first has waited
        flush_interval, or a flush asks; None when the stream has been idle too long, or when
        closing."""
        assert self._wake is not None
        if not await self._wait_for_work(self.idle_timeout):
            return None
        deadline = time.monotonic() + self.flush_interval
        while len(self._buffer) < self.batch_size and not self._flushing and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()
        with self._lock:
            n = min(self.batch_size, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(n)]
            if self._full_warned and len(self._buffer) < self.max_buffered // 2:
                self._full_warned = False
        return batch

    async def _stream(self, stub: service_pb2_grpc.PipelineMonitorStub) -> None:
        """One stream: a request at a time, each answered (durable) before the next, until
        the stream has been idle for idle_timeout."""
        # The typing stubs know only the blocking stub's signature.
        call: Any = stub.StreamIngest(metadata=self._metadata)  # type: ignore[call-arg]
        try:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    await call.done_writing()
                    await call.read()  # the end of the stream, or its error
                    return
                self._in_flight = batch
                try:
                    await call.write(service_pb2.IngestRequest(executions=batch))
                except asyncio.InvalidStateError:  # the stream had already ended
                    raise await _error_of(call) from None
                response = await call.read()
                if response is _EOF:
                    raise await _error_of(call)
                self._acknowledged(response)
        finally:
            call.cancel()

    def _acknowledged(self, response: service_pb2.IngestResponse) -> None:
        stats = self.stats
        stats.accepted += response.accepted
        stats.duplicates += response.duplicates
        stats.running += response.running
        stats.rejected += len(response.rejected)
        for r in response.rejected[:3]:
            log.warning("pipewarden refused execution %r: %s", r.execution_id, r.reason)
        self._in_flight = []
        if not self._buffer:
            assert self._drained is not None
            self._drained.set()
        if self._last_error is not None:
            log.info("pipewarden reporter: sending again to %s", self.target)
            self._last_error = None

    def _broken(self, code: grpc.StatusCode, details: str, hint: float | None = None) -> None:
        batch, self._in_flight = self._in_flight, []
        message = f"{code.name}: {details}"
        if not retriable(code, hint):
            self.stats.dropped += len(batch)
            log.error("pipewarden refused a batch of %d executions: %s", len(batch), message)
            return
        self.stats.retries += 1
        with self._lock:
            self._buffer.extendleft(reversed(batch))
            while len(self._buffer) > self.max_buffered:
                self._buffer.popleft()
                self.stats.dropped += 1
        if message != self._last_error:  # log only when the error changes
            log.warning("pipewarden at %s: %s; retrying with backoff", self.target, message)
        self._last_error = message


async def _error_of(call: Any) -> grpc.aio.AioRpcError:
    """The error a stream ended with (a stream that ends early without one is UNAVAILABLE)."""
    code = await call.code()
    if code == grpc.StatusCode.OK:
        code = grpc.StatusCode.UNAVAILABLE
    details = await call.details() or "the stream ended before answering"
    trailing = await call.trailing_metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, None)


class Reporter(Tracker):
    """The buffered reporter for synchronous code: an AsyncReporter on a background thread.
    `report()` never blocks; it is flushed (at most `close_timeout`) at interpreter exit.

    reporter = Reporter("127.0.0.1:50051", team="payments")
    @reporter.track("payments.settle")
    def settle() -> None: ...
    """

    def __init__(
        self, target: str, *, team: str = "", close_timeout: float = 5.0, **options: Any
    ) -> None:
        super().__init__(team)
        self.close_timeout = close_timeout
        """Longest close() (and so interpreter exit) waits for unsent executions."""
        self._async = AsyncReporter(target, team=team, **options)
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="pipewarden-reporter", daemon=True
        )
        self._thread.start()
        started.wait()
        self._closed = False
        atexit.register(self.close)

    @property
    def stats(self) -> ReporterStats:
        """What the reporter has done so far."""
        return self._async.stats

    @property
    def pending(self) -> int:
        """Executions not yet acknowledged."""
        return self._async.pending

    def report(self, execution: PipelineExecution) -> None:
        """Queue one execution; never blocks."""
        self._async.report(execution)

    def report_many(self, executions: Iterable[PipelineExecution]) -> None:
        """Queue several executions."""
        for e in executions:
            self._async.report(e)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything reported is acknowledged, at most `timeout` seconds."""
        if self._closed:
            return self.pending == 0
        future = asyncio.run_coroutine_threadsafe(self._async.flush(timeout), self._loop)
        try:
            return future.result(None if timeout is None else timeout + 1.0)
        except FutureTimeoutError:
            return False

    def close(self, timeout: float | None = None) -> None:
        """Flush for at most `timeout` (default close_timeout) seconds, then stop the thread.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        wait = self.close_timeout if timeout is None else timeout
        future = asyncio.run_coroutine_threadsafe(self._async.close(wait), self._loop)
        with contextlib.suppress(FutureTimeoutError):
            future.result(wait + 2.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2.0)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._async.start())
        started.set()
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()
