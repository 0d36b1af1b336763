"""Domain types of ingestion: one execution event, as the server works with it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["CANCELLED", "FAILED", "RUNNING", "STATUS_NAMES", "SUCCEEDED", "TERMINAL", "Execution"]

# The numbers are those of pipewarden.v1.ExecutionStatus, so no table is needed to translate.
SUCCEEDED: Final = 1
FAILED: Final = 2
RUNNING: Final = 3
CANCELLED: Final = 4
TERMINAL: Final = frozenset({SUCCEEDED, FAILED, CANCELLED})
STATUS_NAMES: Final = {
    SUCCEEDED: "succeeded",
    FAILED: "failed",
    RUNNING: "running",
    CANCELLED: "cancelled",
}


class Execution:
    """One validated execution event. Times are Unix seconds; None when the runner left them out."""

    __slots__ = (
        "duration",
        "error_message",
        "event_time",
        "execution_id",
        "finished_at",
        "labels",
        "pipeline_id",
        "records",
        "started_at",
        "status",
        "team",
        "upstream",
    )

    def __init__(
        self,
        execution_id: str,
        pipeline_id: str,
        team: str,
        status: int,
        started_at: float | None,
        finished_at: float | None,
        duration: float | None,
        records: int,
        upstream: tuple[str, ...],
        labels: Mapping[str, str],
        error_message: str,
        event_time: float,
    ) -> None:
        self.execution_id = execution_id
        self.pipeline_id = pipeline_id
        self.team = team
        self.status = status
        self.started_at = started_at
        self.finished_at = finished_at
        self.duration = duration
        """Seconds; None when neither given nor derivable from the start and finish times."""
        self.records = records
        self.upstream = upstream
        self.labels = labels
        self.error_message = error_message
        self.event_time = event_time
        """When the event happened: finish time, else start + duration, else start, else the
        server's receive time."""

    def __repr__(self) -> str:
        return (
            f"Execution({self.execution_id!r}, pipeline={self.pipeline_id!r}, team={self.team!r}, "
            f"status={STATUS_NAMES.get(self.status, self.status)}, t={self.event_time})"
        )
