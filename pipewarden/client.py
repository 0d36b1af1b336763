"""A small typed client for Pipewarden's gRPC API.

from pipewarden.client import Client, execution
with Client("127.0.0.1:50051") as pw:
    pw.ingest([execution("run-1", "payments.settle", "payments", "succeeded", duration=42.0)])
    print(pw.pipeline_health("payments.settle").success_rate)

For pipeline runners, the buffered reporters and run tracking (see pipewarden.reporter):

from pipewarden.client import Reporter, current_run
reporter = Reporter("127.0.0.1:50051", team="payments")
@reporter.track("payments.settle")
def settle() -> None:
    current_run().records = 42
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from pipewarden.reporter import AsyncReporter, Reporter, ReporterStats
from pipewarden.runs import Run, current_run
from pipewarden.v1 import anomaly_pb2, execution_pb2, health_pb2, service_pb2, service_pb2_grpc

__all__ = [
    "AsyncReporter",
    "Client",
    "Reporter",
    "ReporterStats",
    "Run",
    "current_run",
    "execution",
]

_STATUS = {
    "succeeded": execution_pb2.EXECUTION_STATUS_SUCCEEDED,
    "failed": execution_pb2.EXECUTION_STATUS_FAILED,
    "running": execution_pb2.EXECUTION_STATUS_RUNNING,
    "cancelled": execution_pb2.EXECUTION_STATUS_CANCELLED,
}


def _timestamp(t: float | datetime) -> Timestamp:
    ts = Timestamp()
    if isinstance(t, datetime):
        ts.FromDatetime(t)
    else:
        ts.FromNanoseconds(int(t * 1e9))
    return ts


def execution(
    execution_id: str,
    pipeline_id: str,
    team: str,
    status: str,
    *,
    started_at: float | datetime | None = None,
    finished_at: float | datetime | None = None,
    duration: float | None = None,
    records: int = 0,
    upstream: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    error_message: str = "",
) -> execution_pb2.PipelineExecution:
    """A PipelineExecution from plain Python values. `status` is succeeded, failed, running or
    cancelled; times are datetimes or Unix seconds; duration is seconds."""
    msg = execution_pb2.PipelineExecution(
        execution_id=execution_id,
        pipeline_id=pipeline_id,
        team=team,
        status=_STATUS[status.lower()],
        records_processed=records,
        upstream_pipeline_ids=list(upstream),
        labels=dict(labels or {}),
        error_message=error_message,
    )
    if started_at is not None:
        msg.started_at.CopyFrom(_timestamp(started_at))
    if finished_at is not None:
        msg.finished_at.CopyFrom(_timestamp(finished_at))
    if duration is not None:
        d = Duration()
        d.FromNanoseconds(int(duration * 1e9))
        msg.duration.CopyFrom(d)
    return msg


class Client:
    """A blocking client. Use it as a context manager, or call `close()`."""

    def __init__(self, target: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.target = target
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._channel = grpc.insecure_channel(target)
        self.stub = service_pb2_grpc.PipelineMonitorStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects, or raise grpc.FutureTimeoutError."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def ingest(
        self, executions: Iterable[execution_pb2.PipelineExecution]
    ) -> service_pb2.IngestResponse:
        """Send one batch; returns once what was accepted is durable."""
        request = service_pb2.IngestRequest(executions=list(executions))
        response: service_pb2.IngestResponse = self.stub.Ingest(
            request, timeout=self.timeout, metadata=self._metadata
        )
        return response

    def stream_ingest(
        self, requests: Iterable[service_pb2.IngestRequest]
    ) -> Iterator[service_pb2.IngestResponse]:
        """Send many batches on one stream; yields one response per request, in order."""
        yield from self.stub.StreamIngest(iter(requests), metadata=self._metadata)

    def pipeline_health(self, pipeline_id: str) -> health_pb2.PipelineHealth:
        """One pipeline's health; grpc.RpcError NOT_FOUND when unknown."""
        response: health_pb2.PipelineHealth = self.stub.GetPipelineHealth(
            service_pb2.GetPipelineHealthRequest(pipeline_id=pipeline_id),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return response

    def list_pipeline_health(
        self, team: str = "", page_size: int = 500
    ) -> Iterator[health_pb2.PipelineHealth]:
        """Every pipeline (optionally one team's), in pipeline_id order, page by page."""
        token = ""
        while True:
            page: service_pb2.ListPipelineHealthResponse = self.stub.ListPipelineHealth(
                service_pb2.ListPipelineHealthRequest(
                    team=team, page_size=page_size, page_token=token
                ),
                timeout=self.timeout,
                metadata=self._metadata,
            )
            yield from page.pipelines
            token = page.next_page_token
            if not token:
                return

    def team_metrics(self, team: str) -> health_pb2.TeamMetrics:
        """One team's metrics; grpc.RpcError NOT_FOUND when unknown."""
        response: health_pb2.TeamMetrics = self.stub.GetTeamMetrics(
            service_pb2.GetTeamMetricsRequest(team=team),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return response

    def anomalies(
        self, *, team: str = "", pipeline_id: str = "", min_severity: int = 0
    ) -> list[anomaly_pb2.Anomaly]:
        """The current anomalies, most severe first. min_severity is a Severity number."""
        response: service_pb2.ListAnomaliesResponse = self.stub.ListAnomalies(
            service_pb2.ListAnomaliesRequest(
                team=team,
                pipeline_id=pipeline_id,
                min_severity=min_severity,  # type: ignore[arg-type]
            ),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return list(response.anomalies)

    def list_team_metrics(self) -> list[health_pb2.TeamMetrics]:
        """Every team's metrics, in team order."""
        response: service_pb2.ListTeamMetricsResponse = self.stub.ListTeamMetrics(
            service_pb2.ListTeamMetricsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return list(response.teams)
