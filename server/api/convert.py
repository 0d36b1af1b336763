"""Domain values to protobuf messages, and the page tokens of ListPipelineHealth."""

from __future__ import annotations

import base64
import binascii

from pipewarden.server.alerting.convert import timestamp
from pipewarden.server.core.ingest import IngestOutcome
from pipewarden.server.core.shards import PipelineState, TeamTotals
from pipewarden.server.detection.anomalies import CurrentAnomaly
from pipewarden.v1 import anomaly_pb2, health_pb2, service_pb2

__all__ = [
    "anomaly",
    "decode_token",
    "encode_token",
    "ingest_response",
    "pipeline_health",
    "team_metrics",
]


def pipeline_health(p: PipelineState) -> health_pb2.PipelineHealth:
    """The API view of a pipeline's state."""
    recent_rate, recent_runs = p.recent_success_rate()
    msg = health_pb2.PipelineHealth(
        pipeline_id=p.pipeline_id,
        team=p.team,
        total_executions=p.total,
        succeeded=p.succeeded,
        failed=p.failed,
        cancelled=p.cancelled,
        success_rate=p.success_rate,
        avg_duration_seconds=p.avg_duration,
        avg_records_processed=p.avg_records,
        consecutive_failures=p.consecutive_failures,
        last_status=p.last_status,  # type: ignore[arg-type]
        in_flight=len(p.in_flight) if p.in_flight else 0,
        last_error_message=p.last_error,
        recent_success_rate=recent_rate,
        recent_executions=recent_runs,
        upstream_pipeline_ids=p.upstream,
    )
    if p.last_time is not None:
        msg.last_execution_time.CopyFrom(timestamp(p.last_time))
    if p.last_success_time is not None:
        msg.last_success_time.CopyFrom(timestamp(p.last_success_time))
    return msg


def team_metrics(team: str, t: TeamTotals) -> health_pb2.TeamMetrics:
    """The API view of a team's totals."""
    judged = t.succeeded + t.failed
    return health_pb2.TeamMetrics(
        team=team,
        pipeline_count=t.pipelines,
        total_executions=t.succeeded + t.failed + t.cancelled,
        succeeded=t.succeeded,
        failed=t.failed,
        cancelled=t.cancelled,
        success_rate=t.succeeded / judged if judged else 0.0,
        avg_duration_seconds=t.duration_sum / t.duration_count if t.duration_count else 0.0,
        avg_records_processed=t.records_sum / judged if judged else 0.0,
        failing_pipelines=t.failing,
    )


def anomaly(current: CurrentAnomaly) -> anomaly_pb2.Anomaly:
    """The API view of a current anomaly."""
    a = current.anomaly
    msg = anomaly_pb2.Anomaly(
        pipeline_id=a.pipeline_id,
        team=a.team,
        kind=a.kind,  # type: ignore[arg-type]
        severity=a.severity,  # type: ignore[arg-type]
        message=a.message,
        observed=a.observed,
        expected=a.expected,
        unit=a.unit,
    )
    msg.detected_at.CopyFrom(timestamp(current.detected_at))
    return msg


def ingest_response(out: IngestOutcome) -> service_pb2.IngestResponse:
    """The API view of an ingest outcome."""
    return service_pb2.IngestResponse(
        accepted=out.accepted,
        duplicates=out.duplicates,
        running=out.running,
        rejected=[
            service_pb2.RejectedExecution(index=i, execution_id=eid, reason=reason)
            for i, eid, reason in out.rejected
        ],
    )


def encode_token(team: str, after: str) -> str:
    """The page token that continues a listing (for the `team` filter) after pipeline `after`."""
    raw = f"v1\x00{team}\x00{after}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, team: str) -> str | None:
    """The pipeline id a page token continues after, or None when the token is not valid."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    parts = raw.split("\x00")
    if len(parts) != 3 or parts[0] != "v1" or parts[1] != team or not parts[2]:
        return None
    return parts[2]
