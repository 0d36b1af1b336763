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

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType

import grpc
from google.protobuf.duration_pb2 import Duration

from pipewarden.reporter import AsyncReporter, Reporter, ReporterStats
from pipewarden.runs import Run, current_run
from pipewarden.times import timestamp
from pipewarden.v1 import (
    alert_pb2,
    anomaly_pb2,
    execution_pb2,
    health_pb2,
    service_pb2,
    service_pb2_grpc,
)

__all__ = [
    "AsyncReporter",
    "Client",
    "Reporter",
    "ReporterStats",
    "Run",
    "current_run",
    "execution",
    "tls_credentials",
]

_STATUS = {
    "succeeded": execution_pb2.EXECUTION_STATUS_SUCCEEDED,
    "failed": execution_pb2.EXECUTION_STATUS_FAILED,
    "running": execution_pb2.EXECUTION_STATUS_RUNNING,
    "cancelled": execution_pb2.EXECUTION_STATUS_CANCELLED,
}


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
        msg.started_at.CopyFrom(timestamp(started_at))
    if finished_at is not None:
        msg.finished_at.CopyFrom(timestamp(finished_at))
    if duration is not None:
        d = Duration()
        d.FromNanoseconds(int(duration * 1e9))
        msg.duration.CopyFrom(d)
    return msg


def tls_credentials(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> grpc.ChannelCredentials | None:
    """Channel credentials from PEM files: `ca` to trust (None: the system's roots), and for
    mutual TLS the client's `cert` and `key`. None when none is given (plaintext)."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise ValueError("a client certificate needs its key, and a key its certificate")

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )


class Client:
    """A blocking client. Use it as a context manager, or call `close()`."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._channel = (
            grpc.secure_channel(target, credentials)
            if credentials is not None
            else grpc.insecure_channel(target)
        )
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

    # -- alerts ----------------------------------------------------------------------------------

    def alerts(
        self, *, team: str = "", min_severity: int = 0, state: int = 0
    ) -> list[alert_pb2.Alert]:
        """Alerts, open before resolved and most severe first. min_severity is a Severity
        number, state an AlertState number (0: any)."""
        response: service_pb2.ListAlertsResponse = self.stub.ListAlerts(
            service_pb2.ListAlertsRequest(
                team=team,
                min_severity=min_severity,  # type: ignore[arg-type]
                state=state,  # type: ignore[arg-type]
            ),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return list(response.alerts)

    def routed_alerts(self, team: str = "") -> alert_pb2.RoutedAlerts:
        """Open alerts grouped by team, then severity."""
        response: alert_pb2.RoutedAlerts = self.stub.GetRoutedAlerts(
            service_pb2.GetRoutedAlertsRequest(team=team),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return response

    def watch_alerts(
        self,
        *,
        team: str = "",
        min_severity: int = 0,
        subscribed: Callable[[], None] | None = None,
    ) -> Iterator[alert_pb2.AlertEvent]:
        """Alert events as they happen, until the stream ends; `subscribed` is called once the
        server has the subscription. A watcher that falls behind gets grpc.RpcError
        RESOURCE_EXHAUSTED: call again, and read `alerts()` to catch up."""
        call = self.stub.WatchAlerts(
            service_pb2.WatchAlertsRequest(
                team=team,
                min_severity=min_severity,  # type: ignore[arg-type]
            ),
            metadata=self._metadata,
        )
        try:
            if subscribed is not None:
                call.initial_metadata()
                subscribed()
            yield from call
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def acknowledge(self, alert_id: str, by: str) -> alert_pb2.Alert:
        """Acknowledge an alert as `by`; returns it once the acknowledgement is durable."""
        response: alert_pb2.Alert = self.stub.AcknowledgeAlert(
            service_pb2.AcknowledgeAlertRequest(alert_id=alert_id, by=by),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return response

    def create_silence(
        self,
        *,
        ends_at: float | datetime,
        created_by: str,
        team: str = "",
        pipeline_id: str = "",
        kind: int = 0,
        starts_at: float | datetime | None = None,
        comment: str = "",
    ) -> alert_pb2.Silence:
        """Mute the notifications of matching alerts (empty matchers match everything) from
        `starts_at` (default now) until `ends_at`. Returns the silence with its id."""
        silence = alert_pb2.Silence(
            team=team,
            pipeline_id=pipeline_id,
            kind=kind,  # type: ignore[arg-type]
            ends_at=timestamp(ends_at),
            created_by=created_by,
            comment=comment,
        )
        if starts_at is not None:
            silence.starts_at.CopyFrom(timestamp(starts_at))
        response: alert_pb2.Silence = self.stub.CreateSilence(
            service_pb2.CreateSilenceRequest(silence=silence),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return response

    def silences(self, team: str = "") -> list[alert_pb2.Silence]:
        """Silences that have not ended, soonest ending first."""
        response: service_pb2.ListSilencesResponse = self.stub.ListSilences(
            service_pb2.ListSilencesRequest(team=team),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return list(response.silences)

    def delete_silence(self, silence_id: str, by: str) -> alert_pb2.Silence:
        """End a silence now; returns it as ended."""
        response: alert_pb2.Silence = self.stub.DeleteSilence(
            service_pb2.DeleteSilenceRequest(silence_id=silence_id, by=by),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return response

    def alert_history(self, team: str = "", limit: int = 100) -> list[alert_pb2.AlertEvent]:
        """The latest alert events, newest first."""
        response: service_pb2.ListAlertHistoryResponse = self.stub.ListAlertHistory(
            service_pb2.ListAlertHistoryRequest(team=team, limit=limit),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return list(response.events)
