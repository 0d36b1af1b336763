"""What one execution and one request may carry, and what a pipeline may cost: the bounds the
core enforces (the `server.limits` section of the configuration)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PIPELINE_MEMORY_BUDGET", "IngestLimits"]


@dataclass(frozen=True)
class IngestLimits:
    """Bounds on what one request may carry; beyond them a request or a row is refused."""

    max_request_bytes: int = 16 * 1024 * 1024
    """Largest accepted request message; larger ones get RESOURCE_EXHAUSTED."""
    max_executions_per_request: int = 10_000
    """Most executions in one IngestRequest; more get RESOURCE_EXHAUSTED."""
    max_id_length: int = 256
    """Longest execution_id, pipeline_id or upstream pipeline id; longer rows are rejected."""
    max_team_length: int = 128
    """Longest team name; longer rows are rejected."""
    max_labels: int = 16
    """Most labels on one execution; more are rejected. (A pipeline keeps its labels: see
    PIPELINE_MEMORY_BUDGET for what the defaults cost.)"""
    max_label_length: int = 128
    """Longest label key or value, in characters."""
    max_upstreams: int = 16
    """Most upstream pipeline ids on one execution (a pipeline keeps its latest list)."""
    max_error_message_length: int = 1024
    """Longer error messages are kept, cut to this length (a pipeline keeps its last one)."""
    max_pipelines_per_team: int = 20_000
    """Distinct pipelines one team may have, so that one runaway producer cannot exhaust
    memory; events of new pipelines beyond it are rejected (existing ones keep counting).
    At the defaults, a team's pipelines take at most this x PIPELINE_MEMORY_BUDGET (1.2 GiB)."""
    max_future_skew_seconds: int = 86_400
    """How far ahead of the server's clock an event's times (started_at, finished_at, or start +
    duration) may lie; an event beyond it is rejected with a reason, so that a runner with a
    wrong clock (or a year-9999 time) cannot count runs that have not happened."""
    small_message_bytes: int = field(init=False, repr=False, compare=False)
    """Derived: the size below which no per-string or per-entry limit can be exceeded (no string
    is longer than its message; a label costs at least 4 bytes, an upstream id 2)."""

    def __post_init__(self) -> None:
        small = min(
            self.max_id_length,
            self.max_label_length,
            4 * self.max_labels,
            2 * self.max_upstreams,
        )
        object.__setattr__(self, "small_message_bytes", small)


PIPELINE_MEMORY_BUDGET = 64 * 1024
"""Bytes one pipeline's state may take at worst with the default limits: every label, upstream
id, in-flight run id and error text at its longest, in 4-byte characters (ASCII text takes about
a third of it). tests/test_memory_budget.py measures it through the ingest path, so a default
raised past it fails there."""
