"""The scenario as the server would receive it: one IngestRequest per simulated step.

Each run sends a RUNNING event when it starts and a terminal event when it ends (a stuck run
never does). A step's request holds the events whose event time falls in the step, in event-time
order; it is serialized once and replayed against every detector configuration.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from eval.scenario import Pipeline, Scenario, runs
from pipewarden.v1 import execution_pb2, service_pb2

__all__ = ["STEP_SECONDS", "Step", "steps"]

STEP_SECONDS = 300.0
"""Simulated time between two requests, and between two looks at the deadlines."""

_NS = 1_000_000_000
_RUNNING = 3  # pipewarden.v1.ExecutionStatus


@dataclass(frozen=True, slots=True)
class Step:
    """What arrives at the end of one simulated step."""

    now: float
    """The simulated clock when the request arrives (the step's end)."""
    raw: bytes
    """The request as bytes (what the log keeps); empty when nothing arrived."""
    request: service_pb2.IngestRequest | None
    """The decoded request, or None when nothing arrived in the step."""


_Event = tuple[int, int, bool, Pipeline, int, float, float | None, int, int, str]
# (event time ns, tie-break, terminal, pipeline, slot, started, finished, status, records, error)


def _events(scenario: Scenario) -> Iterator[_Event]:
    streams = []
    for n, p in enumerate(scenario.pipelines):
        events: list[_Event] = []
        for r in runs(p, scenario.spec):
            tie = n * 2
            slot = int(r.slot)
            events.append(
                (int(r.started * _NS), tie, False, p, slot, r.started, None, _RUNNING, 0, "")
            )
            if r.finished is not None:
                events.append(
                    (int(r.finished * _NS), tie + 1, True, p, slot, r.started, r.finished,
                     r.status, r.records, r.error)
                )  # fmt: skip
        events.sort(key=lambda e: (e[0], e[1]))
        streams.append(events)
    return heapq.merge(*streams, key=lambda e: (e[0], e[1]))


def _fill(
    request: service_pb2.IngestRequest, e: _Event, template: execution_pb2.PipelineExecution
) -> None:
    _, _, terminal, p, slot, started, finished, status, records, error = e
    m = request.executions.add()
    m.CopyFrom(template)
    m.execution_id = f"{p.pipeline_id}@{slot}"
    started_ns = int(started * _NS)
    m.started_at.seconds, m.started_at.nanos = divmod(started_ns, _NS)
    if not terminal or finished is None:
        m.status = execution_pb2.EXECUTION_STATUS_RUNNING
        return
    finished_ns = int(finished * _NS)
    m.status = execution_pb2.ExecutionStatus.ValueType(status)
    m.finished_at.seconds, m.finished_at.nanos = divmod(finished_ns, _NS)
    m.duration.seconds, m.duration.nanos = divmod(finished_ns - started_ns, _NS)
    m.records_processed = records
    if error:
        m.error_message = error


def steps(scenario: Scenario, step: float = STEP_SECONDS) -> list[Step]:
    """Every step of the scenario, each with the events that arrived during it."""
    spec = scenario.spec
    out: list[Step] = []
    events = _events(scenario)
    pending = next(events, None)
    templates: dict[str, execution_pb2.PipelineExecution] = {}
    k = 1
    while (now := spec.start + k * step) <= spec.end:
        k += 1
        limit = int(now * _NS)
        if pending is None or pending[0] > limit:
            out.append(Step(now, b"", None))
            continue
        request = service_pb2.IngestRequest()
        while pending is not None and pending[0] <= limit:
            p = pending[3]
            template = templates.get(p.pipeline_id)
            if template is None:
                template = templates[p.pipeline_id] = execution_pb2.PipelineExecution(
                    pipeline_id=p.pipeline_id, team=p.team, labels=dict(p.labels)
                )
            _fill(request, pending, template)
            pending = next(events, None)
        out.append(Step(now, request.SerializeToString(), request))
    return out
