"""Ingest admission: ingest requests take turns, so that reads stay quick under any ingest load.

The server is one event loop. Fifty unthrottled StreamIngest streams each had a request ready
on most turns of the loop, and applying them all came before anything else that was ready: a
read waited behind dozens of requests (p99 1.4 s). Here, requests are decoded and applied one
at a time, and each hands the turn to the next through the loop, so that between two of them
whatever else is ready runs first (a read waits behind one request, a millisecond or two).

That alone leaves reads behind a few steps of the loop, each after a request (p99 over
100 ms with 50 streams on two cores). So reads also get priority: while reads have come in
lately (READS_LINGER_SECONDS), each request hands the turn on only after a pause of a quarter
of the time it took to apply (PAUSE_WHILE_READING), so that ingestion takes at most four fifths
of the loop (p99 about 10 ms); with no reads about, ingestion runs flat out.

Waiting is back-pressure: a stream whose request waits is not read further (see
`IngestMethods.stream_ingest`). A unary Ingest is refused with RESOURCE_EXHAUSTED and a
retry hint rather than queued when the requests already waiting hold `max_waiting_bytes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

__all__ = ["PAUSE_WHILE_READING", "READS_LINGER_SECONDS", "IngestTurns"]

PAUSE_WHILE_READING = 0.25
"""While reads are about, the turn is handed on only after a pause this fraction of the time the
request took: ingestion takes at most four fifths of the loop. Measured with 50 unthrottled
streams and a polling reader on two cores (bench overload): at 1.0, read p99 11-14 ms and
36,000 events/s; at 0.25, 9-12 ms and 62,000; at 0.1, up to 43 ms (max 106) and 76,000."""
READS_LINGER_SECONDS = 5.0
"""How long after a read ingestion keeps yielding part of the loop to reads: a dashboard that
polls every few seconds keeps it. The first read after a quiet spell still waits behind the
requests already queued (a few hundred milliseconds at worst under a flood)."""


class IngestTurns:
    """A fair, first-come turn for applying ingest requests, one at a time."""

    def __init__(
        self, max_waiting_bytes: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.max_waiting_bytes = max_waiting_bytes
        self.clock = clock
        self._reads_until = 0.0
        self.waiting_bytes = 0
        """Bytes of the requests waiting for their turn."""
        self._busy = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        return len(self._waiters)

    def reading(self) -> None:
        """Say that a read (or any call but ingestion) has come in: for a while, ingestion
        leaves reads part of the loop."""
        self._reads_until = self.clock() + READS_LINGER_SECONDS

    def crowded(self, size: int) -> bool:
        """Whether a request of `size` bytes would take the waiting requests beyond
        max_waiting_bytes (one request may always wait)."""
        return self.waiting_bytes > 0 and self.waiting_bytes + size > self.max_waiting_bytes

    @contextlib.asynccontextmanager
    async def turn(self, size: int) -> AsyncIterator[None]:
        """Wait for the turn of a request of `size` bytes, hold it while the block runs, then
        hand it to the next in line."""
        if self._busy or self._waiters:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self.waiting_bytes += size
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._hand_on()  # it was handed the turn as it was cancelled
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            finally:
                self.waiting_bytes -= size
        else:
            self._busy = True
        began = self.clock()
        try:
            yield
        finally:
            now = self.clock()
            if now < self._reads_until:
                pause = (now - began) * PAUSE_WHILE_READING
                asyncio.get_running_loop().call_later(pause, self._hand_on)
            else:
                self._hand_on()

    def _hand_on(self) -> None:
        """The next in line gets the turn; it runs on a later pass of the loop, after what
        is ready now. With none in line the turn is free only from the next pass: requests
        that arrive in this one queue up rather than each being applied at once."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        asyncio.get_running_loop().call_soon(self._free)

    def _free(self) -> None:
        if self._waiters:
            self._hand_on()
        else:
            self._busy = False
