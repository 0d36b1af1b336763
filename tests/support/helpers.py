"""Builders shared by the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pipewarden.client import execution
from pipewarden.v1 import execution_pb2, service_pb2

T0 = 1_780_000_000.0  # a fixed Unix time (2026-05-28)


def run(
    execution_id: str,
    pipeline_id: str = "p1",
    team: str = "team-a",
    status: str = "succeeded",
    *,
    start: float | None = T0,
    duration: float | None = 10.0,
    records: int = 100,
    **kw: Any,
) -> execution_pb2.PipelineExecution:
    """One execution that started at `start` and finished `duration` seconds later."""
    finished = start + duration if start is not None and duration is not None else None
    if status == "running":
        finished = None
    return execution(
        execution_id,
        pipeline_id,
        team,
        status,
        started_at=start,
        finished_at=finished,
        records=records,
        **kw,
    )


def request(*executions: execution_pb2.PipelineExecution) -> service_pb2.IngestRequest:
    """An IngestRequest of these executions."""
    return service_pb2.IngestRequest(executions=list(executions))


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until `predicate()` holds, checking every 10 ms; TimeoutError after `within` s."""
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)
