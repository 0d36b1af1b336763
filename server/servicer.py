"""The gRPC face of Pipewarden: translates between protobuf and the domain, and errors to status.

Methods are registered with raw-bytes deserializers so that an undecodable request is answered
with INVALID_ARGUMENT (grpc's own deserializer would say INTERNAL), and so that ingestion can log
the request's bytes as received.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from pipewarden.v1 import alert_pb2, anomaly_pb2, health_pb2, service_pb2
from server import metrics
from server.alerting.convert import (
    alert_message,
    event_message,
    silence_from_message,
    silence_message,
)
from server.alerting.feed import FeedOverflow
from server.alerting.manager import AlertManager
from server.alerting.model import CRITICAL, HIGH, MEDIUM
from server.anomalies import AnomalyStore, CurrentAnomaly
from server.config import AlertSettings, ServerConfig
from server.errors import LogError, RequestError
from server.eventlog import EventLog
from server.ingest import Ingestor, IngestOutcome
from server.shards import PipelineState, ShardSet, TeamTotals

__all__ = ["SERVICE_NAME", "PipelineMonitorService"]

SERVICE_NAME = "pipewarden.v1.PipelineMonitor"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

M = TypeVar("M", bound=Message)
Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]

DEFAULT_HISTORY = 100


def timestamp(t: float) -> Timestamp:
    """A Timestamp for Unix seconds `t`."""
    seconds = math.floor(t)
    nanos = round((t - seconds) * 1e9)
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    return Timestamp(seconds=seconds, nanos=nanos)


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


def _encode_token(team: str, after: str) -> str:
    raw = f"v1\x00{team}\x00{after}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, team: str) -> str | None:
    """The pipeline id a page token continues after, or None when the token is not valid."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    parts = raw.split("\x00")
    if len(parts) != 3 or parts[0] != "v1" or parts[1] != team or not parts[2]:
        return None
    return parts[2]


class PipelineMonitorService:
    """Implements pipewarden.v1.PipelineMonitor."""

    def __init__(
        self,
        ingestor: Ingestor,
        shards: ShardSet,
        log: EventLog,
        config: ServerConfig,
        *,
        anomalies: AnomalyStore | None = None,
        alerts: AlertManager | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.shards = shards
        self.log = log
        self.config = config
        self.anomalies = anomalies if anomalies is not None else AnomalyStore()
        self.alerts = alerts if alerts is not None else AlertManager(AlertSettings(), log)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The method handlers, to add to a grpc.aio server."""
        ser = _serialize
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Ingest": grpc.unary_unary_rpc_method_handler(self.ingest, None, ser),
            "StreamIngest": grpc.stream_stream_rpc_method_handler(self.stream_ingest, None, ser),
            "GetPipelineHealth": self._unary(
                service_pb2.GetPipelineHealthRequest, self.get_pipeline_health
            ),
            "ListPipelineHealth": self._unary(
                service_pb2.ListPipelineHealthRequest, self.list_pipeline_health
            ),
            "GetTeamMetrics": self._unary(service_pb2.GetTeamMetricsRequest, self.get_team_metrics),
            "ListTeamMetrics": self._unary(
                service_pb2.ListTeamMetricsRequest, self.list_team_metrics
            ),
            "ListAnomalies": self._unary(service_pb2.ListAnomaliesRequest, self.list_anomalies),
            "ListAlerts": self._unary(service_pb2.ListAlertsRequest, self.list_alerts),
            "GetRoutedAlerts": self._unary(
                service_pb2.GetRoutedAlertsRequest, self.get_routed_alerts
            ),
            "WatchAlerts": grpc.unary_stream_rpc_method_handler(
                self.watch_alerts, None, _serialize
            ),
            "AcknowledgeAlert": self._unary(
                service_pb2.AcknowledgeAlertRequest, self.acknowledge_alert
            ),
            "CreateSilence": self._unary(service_pb2.CreateSilenceRequest, self.create_silence),
            "ListSilences": self._unary(service_pb2.ListSilencesRequest, self.list_silences),
            "DeleteSilence": self._unary(service_pb2.DeleteSilenceRequest, self.delete_silence),
            "ListAlertHistory": self._unary(
                service_pb2.ListAlertHistoryRequest, self.list_alert_history
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)

    @staticmethod
    def _unary(
        request_type: type[M], fn: Callable[[M, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await fn(await _parse(request_type, raw, context), context)

        return grpc.unary_unary_rpc_method_handler(handle, None, _serialize)

    # -- ingestion ---------------------------------------------------------------------------

    async def _decode_ingest(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.IngestRequest:
        request = await _parse(service_pb2.IngestRequest, raw, context)
        limit = self.config.limits.max_executions_per_request
        if len(request.executions) > limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request has {len(request.executions)} executions; the limit is {limit} "
                "per request: split it",
            )
        return request

    async def ingest(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.IngestResponse:
        """Ingest: apply, wait until durable, answer."""
        request = await self._decode_ingest(raw, context)
        try:
            outcome, seq = self.ingestor.ingest(raw, request)
            await self.log.wait_durable(seq)
        except LogError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return ingest_response(outcome)

    async def stream_ingest(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[service_pb2.IngestResponse]:
        """StreamIngest: requests are applied as they arrive and answered in order, each once
        durable. At most max_in_flight_per_stream requests wait for their answer; beyond that
        the stream is not read, which pushes back on the client."""
        # Unbounded queue, bounded by the semaphore: the reader never blocks on the queue, so
        # it can always post its end-of-stream marker.
        pending: asyncio.Queue[tuple[IngestOutcome, int] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.config.max_in_flight_per_stream)
        refusal: list[tuple[grpc.StatusCode, str]] = []

        async def read() -> None:
            try:
                async for raw in requests:
                    request = service_pb2.IngestRequest()
                    try:
                        request.ParseFromString(raw)
                    except DecodeError:
                        refusal.append((grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE))
                        return
                    limit = self.config.limits.max_executions_per_request
                    if len(request.executions) > limit:
                        refusal.append(
                            (
                                grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"a request has {len(request.executions)} executions; the limit "
                                f"is {limit} per request: split it",
                            )
                        )
                        return
                    await slots.acquire()
                    try:
                        pending.put_nowait(self.ingestor.ingest(raw, request))
                    except LogError as e:
                        refusal.append((grpc.StatusCode.UNAVAILABLE, str(e)))
                        return
            finally:
                pending.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await pending.get()) is not None:
                outcome, seq = item
                try:
                    await self.log.wait_durable(seq)
                except LogError as e:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
                yield ingest_response(outcome)
                slots.release()
            await reader  # re-raises what ended the reader, if anything did
            if refusal:
                await context.abort(*refusal[0])
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    # -- reads -------------------------------------------------------------------------------

    async def get_pipeline_health(
        self,
        request: service_pb2.GetPipelineHealthRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> health_pb2.PipelineHealth:
        """GetPipelineHealth."""
        if not request.pipeline_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pipeline_id is required")
        state = self.shards.get(request.pipeline_id)
        if state is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no pipeline {request.pipeline_id!r}: no event has named it",
            )
        return pipeline_health(state)

    async def list_pipeline_health(
        self,
        request: service_pb2.ListPipelineHealthRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.ListPipelineHealthResponse:
        """ListPipelineHealth: pages in pipeline_id order; the token names the last id sent, so
        pipelines added while paging do not shift the pages."""
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = ""
        if request.page_token:
            decoded = _decode_token(request.page_token, request.team)
            if decoded is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "page_token is not one this server gave for this team filter; "
                    "start again without it",
                )
            after = decoded or ""
        states, more = self.shards.page(request.team, after, size)
        response = service_pb2.ListPipelineHealthResponse(
            pipelines=[pipeline_health(p) for p in states]
        )
        if more and states:
            response.next_page_token = _encode_token(request.team, states[-1].pipeline_id)
        return response

    async def get_team_metrics(
        self,
        request: service_pb2.GetTeamMetricsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> health_pb2.TeamMetrics:
        """GetTeamMetrics."""
        if not request.team:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "team is required")
        totals = self.shards.team_totals(request.team)
        if totals is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no team {request.team!r}: no event has named it"
            )
        return team_metrics(request.team, totals)

    async def list_team_metrics(
        self,
        request: service_pb2.ListTeamMetricsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.ListTeamMetricsResponse:
        """ListTeamMetrics."""
        teams = []
        for team in self.shards.teams():
            totals = self.shards.team_totals(team)
            if totals is not None:
                teams.append(team_metrics(team, totals))
        return service_pb2.ListTeamMetricsResponse(teams=teams)

    async def list_anomalies(
        self,
        request: service_pb2.ListAnomaliesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.ListAnomaliesResponse:
        """ListAnomalies: the current anomalies, most severe first."""
        if request.min_severity not in anomaly_pb2.Severity.values():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"min_severity {request.min_severity} is not a known Severity",
            )
        found = self.anomalies.list(
            team=request.team, pipeline_id=request.pipeline_id, min_severity=request.min_severity
        )
        return service_pb2.ListAnomaliesResponse(anomalies=[anomaly(c) for c in found])

    # -- alerts ------------------------------------------------------------------------------

    async def list_alerts(
        self, request: service_pb2.ListAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.ListAlertsResponse:
        """ListAlerts: open before resolved, most severe first."""
        await _check_severity(request.min_severity, context)
        if request.state not in alert_pb2.AlertState.values():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"state {request.state} is not a known AlertState"
            )
        found = self.alerts.book.alerts(
            team=request.team, min_severity=request.min_severity, state=request.state
        )
        return service_pb2.ListAlertsResponse(alerts=[alert_message(a) for a in found])

    async def get_routed_alerts(
        self,
        request: service_pb2.GetRoutedAlertsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> alert_pb2.RoutedAlerts:
        """GetRoutedAlerts: open alerts by team, then severity."""
        routed = alert_pb2.RoutedAlerts()
        for team, by_severity in self.alerts.book.routed(request.team).items():
            group = routed.teams[team]
            for severity, field in ((CRITICAL, group.critical), (HIGH, group.high),
                                    (MEDIUM, group.medium)):  # fmt: skip
                field.extend(alert_message(a) for a in by_severity.get(severity, ()))
        return routed

    async def watch_alerts(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[alert_pb2.AlertEvent]:
        """WatchAlerts: events as they happen (once durable), filtered. A watcher that falls
        behind by watch_queue_size events is ended with RESOURCE_EXHAUSTED."""
        request = await _parse(service_pb2.WatchAlertsRequest, raw, context)
        await _check_severity(request.min_severity, context)
        size = self.alerts.settings.watch_queue_size
        subscription = self.alerts.feed.subscribe(request.team, request.min_severity, size)
        metrics.ALERT_WATCHERS.inc()
        try:
            # Headers now, so that a client knows it is subscribed before the first event.
            await context.send_initial_metadata(())
            async for event in subscription:
                yield event_message(event)
        except FeedOverflow:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this watcher fell more than {size} events behind and was dropped so that "
                "it slows nobody: reconnect, and use ListAlerts to catch up",
            )
        finally:
            subscription.close()
            metrics.ALERT_WATCHERS.dec()

    async def acknowledge_alert(
        self,
        request: service_pb2.AcknowledgeAlertRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> alert_pb2.Alert:
        """AcknowledgeAlert: answered once the acknowledgement is durable."""
        try:
            alert, seq = self.alerts.acknowledge(request.alert_id, request.by)
            await self.log.wait_durable(seq)
        except RequestError as e:
            await context.abort(grpc.StatusCode[e.code], str(e))
        except LogError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return alert_message(alert)

    async def create_silence(
        self,
        request: service_pb2.CreateSilenceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> alert_pb2.Silence:
        """CreateSilence: answered once the silence is durable."""
        if not request.HasField("silence"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "silence is required")
        if request.silence.silence_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "silence_id is assigned by the server: leave it empty",
            )
        wanted = silence_from_message(request.silence, self.alerts.clock())
        try:
            created, seq = self.alerts.create_silence(wanted)
            await self.log.wait_durable(seq)
        except RequestError as e:
            await context.abort(grpc.StatusCode[e.code], str(e))
        except LogError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return silence_message(created)

    async def list_silences(
        self,
        request: service_pb2.ListSilencesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.ListSilencesResponse:
        """ListSilences: those that have not ended, soonest ending first."""
        found = self.alerts.current_silences(request.team)
        return service_pb2.ListSilencesResponse(silences=[silence_message(s) for s in found])

    async def delete_silence(
        self,
        request: service_pb2.DeleteSilenceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> alert_pb2.Silence:
        """DeleteSilence: ends it now; answered once that is durable."""
        try:
            ended, seq = self.alerts.delete_silence(request.silence_id, request.by)
            await self.log.wait_durable(seq)
        except RequestError as e:
            await context.abort(grpc.StatusCode[e.code], str(e))
        except LogError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return silence_message(ended)

    async def list_alert_history(
        self,
        request: service_pb2.ListAlertHistoryRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.ListAlertHistoryResponse:
        """ListAlertHistory: the latest events, newest first."""
        if request.limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must not be negative")
        events = self.alerts.book.history(request.team, request.limit or DEFAULT_HISTORY)
        return service_pb2.ListAlertHistoryResponse(events=[event_message(e) for e in events])


_UNDECODABLE = "the request is not a valid protobuf message of the expected type"


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def _check_severity(value: int, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if value not in anomaly_pb2.Severity.values():
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"min_severity {value} is not a known Severity"
        )


async def _parse(
    request_type: type[M], raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> M:
    request = request_type()
    try:
        request.ParseFromString(raw)
    except DecodeError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE)
    return request
