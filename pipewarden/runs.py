"""Report a Python job's run in two lines: a decorator or a context manager, sync or async.

reporter = Reporter("127.0.0.1:50051", team="payments")

@reporter.track("payments.settle")
def settle() -> None:
    current_run().records = 42          # optional: what the job processed

At the start: RUNNING. At the end: SUCCEEDED, or FAILED with the exception's type and message
(the exception goes on), or CANCELLED on KeyboardInterrupt or task cancellation; with the start
and finish times (so the duration) and the records the job set. Reporting never raises into the
job and never blocks it: the reporter buffers.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from google.protobuf.timestamp_pb2 import Timestamp

from pipewarden.v1 import execution_pb2
from pipewarden.v1.execution_pb2 import PipelineExecution

__all__ = ["Run", "TrackedRun", "Tracker", "current_run"]

F = TypeVar("F", bound=Callable[..., Any])

_current: ContextVar[Run | None] = ContextVar("pipewarden_run", default=None)


class _Sink(Protocol):
    def report(self, execution: PipelineExecution) -> None: ...


class Run:
    """The run being reported: set `records` (and labels or upstream ids) while it runs."""

    def __init__(
        self,
        execution_id: str,
        pipeline_id: str,
        team: str,
        *,
        labels: Mapping[str, str] | None = None,
        upstream: Sequence[str] = (),
    ) -> None:
        self.execution_id = execution_id
        self.pipeline_id = pipeline_id
        self.team = team
        self.records = 0
        """Records processed: the job sets it."""
        self.labels = dict(labels or {})
        self.upstream = list(upstream)
        self.started_ns = time.time_ns()
        self.error_message = ""

    def execution(self, status: int, finished_ns: int | None = None) -> PipelineExecution:
        """This run as an execution event with `status`."""
        msg = PipelineExecution(
            execution_id=self.execution_id,
            pipeline_id=self.pipeline_id,
            team=self.team,
            status=status,  # type: ignore[arg-type]
            records_processed=self.records,
            upstream_pipeline_ids=self.upstream,
            labels=self.labels,
            error_message=self.error_message,
        )
        msg.started_at.CopyFrom(_timestamp(self.started_ns))
        if finished_ns is not None:
            msg.finished_at.CopyFrom(_timestamp(finished_ns))
        return msg


def current_run() -> Run:
    """The run that the innermost tracked function or block is reporting."""
    run = _current.get()
    if run is None:
        raise LookupError("no Pipewarden run is being tracked here")
    return run


class TrackedRun:
    """One use of `track`: a context manager (`with`, `async with`) or a decorator."""

    def __init__(self, sink: _Sink, make: Callable[[], Run]) -> None:
        self._sink = sink
        self._make = make
        self._runs: list[tuple[Run, Token[Run | None]]] = []

    def __enter__(self) -> Run:
        run = self._make()
        self._runs.append((run, _current.set(run)))
        self._sink.report(run.execution(execution_pb2.EXECUTION_STATUS_RUNNING))
        return run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run, token = self._runs.pop()
        _current.reset(token)
        finished = time.time_ns()
        if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            status = execution_pb2.EXECUTION_STATUS_SUCCEEDED
        elif isinstance(exc, KeyboardInterrupt | asyncio.CancelledError | GeneratorExit):
            status = execution_pb2.EXECUTION_STATUS_CANCELLED
        else:
            status = execution_pb2.EXECUTION_STATUS_FAILED
            run.error_message = run.error_message or f"{type(exc).__name__}: {exc}"
        self._sink.report(run.execution(status, finished))

    async def __aenter__(self) -> Run:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: F) -> F:
        """Decorate `fn`: every call is a run."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with TrackedRun(self._sink, self._make):
                    return await fn(*args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(fn)
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            with TrackedRun(self._sink, self._make):
                return fn(*args, **kwargs)

        return cast(F, run_sync)


class Tracker:
    """Gives a reporter `track()`; the reporter provides `report()`."""

    def __init__(self, team: str = "") -> None:
        self.team = team
        """The team of the runs this reporter tracks, unless `track` names another."""

    def report(self, execution: PipelineExecution) -> None:
        """Queue one execution (implemented by the reporters)."""
        raise NotImplementedError

    def track(
        self,
        pipeline_id: str,
        *,
        team: str | None = None,
        execution_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        upstream: Sequence[str] = (),
    ) -> TrackedRun:
        """Report a run of `pipeline_id`: as a decorator, each call is a run; as a context
        manager, the block is. `execution_id` defaults to a new UUID per run (pass the
        scheduler's run id to make retries of a report idempotent)."""
        owner = team or self.team
        if not owner:
            raise ValueError("a run needs a team: give it to the reporter or to track()")

        def make() -> Run:
            return Run(
                execution_id or str(uuid.uuid4()),
                pipeline_id,
                owner,
                labels=labels,
                upstream=upstream,
            )

        return TrackedRun(self, make)


def _timestamp(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts
