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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from pipewarden.server.alerting.convert import (
    alert_message,
    event_message,
    silence_from_message,
    silence_message,
    timestamp,
)
from pipewarden.server.alerting.feed import FeedOverflow
from pipewarden.server.alerting.manager import AlertManager
from pipewarden.server.alerting.model import CRITICAL, HIGH, MEDIUM
from pipewarden.server.alerting.settings import AlertSettings
from pipewarden.server.api.admission import IngestTurns
from pipewarden.server.api.auth import ANONYMOUS, Authenticator, Principal, audit
from pipewarden.server.api.limits import RateLimiter, StreamGate
from pipewarden.server.api.requestlimits import RequestLimits
from pipewarden.server.base import metrics
from pipewarden.server.base.errors import LogError, RequestError
from pipewarden.server.base.logsafe import safe
from pipewarden.server.core.ingest import Ingestor, IngestOutcome
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.shards import PipelineState, ShardSet, TeamTotals
from pipewarden.server.detection.anomalies import AnomalyStore, CurrentAnomaly
from pipewarden.server.storage.eventlog import EventLog
from pipewarden.v1 import alert_pb2, anomaly_pb2, health_pb2, service_pb2

__all__ = ["RETRY_METADATA", "SERVICE_NAME", "PipelineMonitorService", "ServicerConfig"]

SERVICE_NAME = "pipewarden.v1.PipelineMonitor"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

M = TypeVar("M", bound=Message)
_T = TypeVar("_T")
Context = grpc.aio.ServicerContext[Any, Any]
Unary = Callable[[bytes, Context, Principal], Awaitable[Any]]
Streaming = Callable[[Any, Context, Principal], AsyncIterator[Any]]

DEFAULT_HISTORY = 100


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


class ServicerConfig(Protocol):
    """What the servicer reads of the `server:` section of the configuration (the wiring passes
    the whole section; tests may pass any object with these)."""

    @property
    def limits(self) -> IngestLimits: ...
    @property
    def rate_limit_per_second(self) -> float: ...
    @property
    def rate_limit_burst(self) -> int: ...
    @property
    def max_streams(self) -> int: ...
    @property
    def max_streams_per_caller(self) -> int: ...
    @property
    def max_streams_per_team(self) -> int: ...
    @property
    def ingest_stream_reserve(self) -> int: ...
    @property
    def ingest_queue_bytes(self) -> int: ...
    @property
    def max_in_flight_per_stream(self) -> int: ...


class PipelineMonitorService:
    """Implements pipewarden.v1.PipelineMonitor."""

    def __init__(
        self,
        ingestor: Ingestor,
        shards: ShardSet,
        log: EventLog,
        config: ServicerConfig,
        *,
        anomalies: AnomalyStore | None = None,
        alerts: AlertManager | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.auth = auth if auth is not None else Authenticator(())
        self.rates = RateLimiter(config.rate_limit_per_second, config.rate_limit_burst)
        self.streams = StreamGate(
            config.max_streams,
            per_caller=config.max_streams_per_caller,
            per_team=config.max_streams_per_team,
            ingest_reserve=config.ingest_stream_reserve,
        )
        self.turns = IngestTurns(config.ingest_queue_bytes)
        """Ingest requests are applied one at a time, each in its turn (server/api/admission.py)."""
        self.ingestor = ingestor
        self.shards = shards
        self.log = log
        self.config = config
        self.anomalies = anomalies if anomalies is not None else AnomalyStore()
        self.alerts = alerts if alerts is not None else AlertManager(AlertSettings(), log)
        self.request_limits = RequestLimits(config.limits)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The method handlers, to add to a grpc.aio server."""
        ser = _serialize
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Ingest": grpc.unary_unary_rpc_method_handler(
                self._guard(self.ingest, "Ingest"), None, ser
            ),
            "StreamIngest": grpc.stream_stream_rpc_method_handler(
                self._guard_stream(self.stream_ingest, "StreamIngest"), None, ser
            ),
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
                self._guard_stream(self.watch_alerts, "WatchAlerts"), None, _serialize
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

    def _unary(
        self, request_type: type[M], fn: Callable[[M, Context, Principal], Awaitable[Any]]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        async def handle(raw: bytes, context: Context, who: Principal) -> Any:
            self.turns.reading()  # ingestion makes room (server/api/admission.py)
            return await fn(await self._parse_checked(request_type, raw, context), context, who)

        name = request_type.DESCRIPTOR.name.removesuffix("Request")
        return grpc.unary_unary_rpc_method_handler(self._guard(handle, name), None, _serialize)

    async def _parse_checked(self, request_type: type[M], raw: bytes, context: Context) -> M:
        """The request, once its strings and times are within their limits (requestlimits);
        otherwise the call ends with INVALID_ARGUMENT, before anything changes."""
        request = await _parse(request_type, raw, context)
        problem = self.request_limits.problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return request

    # -- admission: authentication, rate limits, the stream cap ------------------------------

    async def _admit(self, context: Context, method: str) -> Principal:
        """The caller, once authenticated and within its rate; otherwise the call is ended."""
        if not self.auth.enabled and not self.rates.enabled:
            return ANONYMOUS
        who = self.auth.from_metadata(context.invocation_metadata())
        if isinstance(who, str):
            audit.warning(
                "authentication refused: %s; peer=%s method=%s",
                who,
                context.peer(),
                method,
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, who)
        assert isinstance(who, Principal)
        wait = self.rates.take(who.key)
        if wait:
            await _retry_later(
                context,
                f"rate limit of {self.rates.rate:g} requests a second exceeded for this token: "
                f"retry in {wait:.2f}s",
                wait,
            )
        return who

    def _guard(self, fn: Unary, method: str) -> Callable[[bytes, Context], Awaitable[Any]]:
        async def handle(raw: bytes, context: Context) -> Any:
            return await fn(raw, context, await self._admit(context, method))

        return handle

    def _guard_stream(
        self, fn: Streaming, method: str
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            who = await self._admit(context, method)
            ingest = method == "StreamIngest"
            if ingest:
                await self._may_ingest(who, context)  # before a reader takes a place
            # Without auth every caller is the same principal: each connection is a caller.
            caller = who.key if self.auth.enabled else context.peer()
            refusal = self.streams.enter(caller, who.team, ingest=ingest)
            if refusal:
                await _retry_later(context, refusal, 1.0)
            try:
                async for item in fn(request, context, who):
                    yield item
            finally:
                self.streams.leave(caller, who.team)

        return handle

    async def _throttle(self, key: str) -> None:
        """Wait until `key`'s bucket allows a request (a bounded number of tries, since
        other calls of the same token may take what was waited for)."""
        for _ in range(1000):
            wait = self.rates.take(key)
            if not wait:
                return
            await asyncio.sleep(wait)

    async def _scope(self, team: str, who: Principal, context: Context) -> str:
        """The team filter a read runs with; another team's is refused."""
        scoped = who.scope(team)
        if scoped is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token reads team {who.team!r} only, not {team!r}",
            )
        return scoped or ""

    async def _may_ingest(self, who: Principal, context: Context) -> None:
        if who.role == "reader":
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "a reader token cannot ingest: use a writer's"
            )

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
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any], who: Principal
    ) -> service_pb2.IngestResponse:
        """Ingest: apply, wait until durable, answer."""
        await self._may_ingest(who, context)
        request = await self._decode_ingest(raw, context)
        if self.turns.crowded(len(raw)):
            await _retry_later(
                context,
                f"{self.turns.waiting_bytes} bytes of ingest requests are waiting to be applied, "
                "the limit (server.ingest_queue_bytes): retry in 1s",
                1.0,
            )
        try:
            async with self.turns.turn(len(raw)):
                outcome, seq = self.ingestor.ingest(raw, request, _own(who))
            await self.log.wait_durable(seq)
        except LogError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return ingest_response(outcome)

    async def stream_ingest(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> AsyncIterator[service_pb2.IngestResponse]:
        """StreamIngest: requests are applied as they arrive and answered in order, each once
        durable. At most max_in_flight_per_stream requests wait for their answer; until one
        is answered the stream is not read (a place is taken before reading), which pushes
        back on the client. The token's rate limit counts the stream's opening and each
        further request, and holds the stream back rather than ending it."""
        await self._may_ingest(who, context)
        team = _own(who)
        # Unbounded queue, bounded by the semaphore: the reader never blocks on the queue, so
        # it can always post its end-of-stream marker.
        pending: asyncio.Queue[tuple[IngestOutcome, int] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.config.max_in_flight_per_stream)
        refusal: list[tuple[grpc.StatusCode, str]] = []

        async def read() -> None:
            try:
                incoming = aiter(requests)
                first = True
                while True:
                    await slots.acquire()
                    if not first:
                        # Within a stream the rate limit throttles instead of refusing: the
                        # stream is not read until the token's bucket allows the next request.
                        await self._throttle(who.key)
                    first = False
                    try:
                        raw = await anext(incoming)
                    except StopAsyncIteration:
                        return
                    try:
                        # Decoded and applied in turn with every other ingest request
                        # (server/api/admission.py): waiting here holds the stream back.
                        async with self.turns.turn(len(raw)):
                            pending.put_nowait(self._apply_streamed(raw, team))
                    except _Refused as e:
                        refusal.append((e.code, e.message))
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

    def _apply_streamed(self, raw: bytes, team: str | None) -> tuple[IngestOutcome, int]:
        """Decode and apply one request of a stream; _Refused ends the stream."""
        request = service_pb2.IngestRequest()
        try:
            request.ParseFromString(raw)
        except DecodeError:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE) from None
        limit = self.config.limits.max_executions_per_request
        if len(request.executions) > limit:
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a request has {len(request.executions)} executions; the limit "
                f"is {limit} per request: split it",
            )
        try:
            return self.ingestor.ingest(raw, request, team)
        except LogError as e:
            raise _Refused(grpc.StatusCode.UNAVAILABLE, str(e)) from e

    # -- reads -------------------------------------------------------------------------------

    async def get_pipeline_health(
        self,
        request: service_pb2.GetPipelineHealthRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
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
        if not who.can_read(state.team):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"pipeline {request.pipeline_id!r} is not of this token's team {who.team!r}",
            )
        return pipeline_health(state)

    async def list_pipeline_health(
        self,
        request: service_pb2.ListPipelineHealthRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> service_pb2.ListPipelineHealthResponse:
        """ListPipelineHealth: pages in pipeline_id order; the token names the last id sent, so
        pipelines added while paging do not shift the pages."""
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        team = await self._scope(request.team, who, context)
        after = ""
        if request.page_token:
            decoded = _decode_token(request.page_token, team)
            if decoded is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "page_token is not one this server gave for this team filter; "
                    "start again without it",
                )
            after = decoded or ""
        states, more = self.shards.page(team, after, size)
        response = service_pb2.ListPipelineHealthResponse(
            pipelines=[pipeline_health(p) for p in states]
        )
        if more and states:
            response.next_page_token = _encode_token(team, states[-1].pipeline_id)
        return response

    async def get_team_metrics(
        self,
        request: service_pb2.GetTeamMetricsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> health_pb2.TeamMetrics:
        """GetTeamMetrics."""
        if not request.team:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "team is required")
        await self._scope(request.team, who, context)
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
        who: Principal,
    ) -> service_pb2.ListTeamMetricsResponse:
        """ListTeamMetrics."""
        teams = []
        for team in self.shards.teams():
            if not who.can_read(team):
                continue
            totals = self.shards.team_totals(team)
            if totals is not None:
                teams.append(team_metrics(team, totals))
        return service_pb2.ListTeamMetricsResponse(teams=teams)

    async def list_anomalies(
        self,
        request: service_pb2.ListAnomaliesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> service_pb2.ListAnomaliesResponse:
        """ListAnomalies: the current anomalies, most severe first."""
        if request.min_severity not in anomaly_pb2.Severity.values():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"min_severity {request.min_severity} is not a known Severity",
            )
        team = await self._scope(request.team, who, context)
        found = self.anomalies.list(
            team=team, pipeline_id=request.pipeline_id, min_severity=request.min_severity
        )
        return service_pb2.ListAnomaliesResponse(anomalies=[anomaly(c) for c in found])

    # -- alerts ------------------------------------------------------------------------------

    async def list_alerts(
        self,
        request: service_pb2.ListAlertsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> service_pb2.ListAlertsResponse:
        """ListAlerts: open before resolved, most severe first."""
        await _check_severity(request.min_severity, context)
        if request.state not in alert_pb2.AlertState.values():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"state {request.state} is not a known AlertState"
            )
        team = await self._scope(request.team, who, context)
        found = self.alerts.book.alerts(
            team=team, min_severity=request.min_severity, state=request.state
        )
        return service_pb2.ListAlertsResponse(alerts=[alert_message(a) for a in found])

    async def get_routed_alerts(
        self,
        request: service_pb2.GetRoutedAlertsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> alert_pb2.RoutedAlerts:
        """GetRoutedAlerts: open alerts by team, then severity."""
        routed = alert_pb2.RoutedAlerts()
        scope = await self._scope(request.team, who, context)
        for team, by_severity in self.alerts.book.routed(scope).items():
            group = routed.teams[team]
            for severity, field in ((CRITICAL, group.critical), (HIGH, group.high),
                                    (MEDIUM, group.medium)):  # fmt: skip
                field.extend(alert_message(a) for a in by_severity.get(severity, ()))
        return routed

    async def watch_alerts(
        self,
        raw: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> AsyncIterator[alert_pb2.AlertEvent]:
        """WatchAlerts: events as they happen (once durable), filtered. A watcher that falls
        behind by watch_queue_size events is ended with RESOURCE_EXHAUSTED."""
        request = await self._parse_checked(service_pb2.WatchAlertsRequest, raw, context)
        await _check_severity(request.min_severity, context)
        size = self.alerts.settings.watch_queue_size
        team = await self._scope(request.team, who, context)
        subscription = self.alerts.feed.subscribe(team, request.min_severity, size)
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

    async def _durably(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        change: Callable[[], tuple[_T, int]],
    ) -> _T:
        """Make an alerting change and wait until its record is durable. A refusal ends the call
        with its status; a failed log, with UNAVAILABLE."""
        try:
            result, seq = change()
            await self.log.wait_durable(seq)
        except RequestError as e:
            await context.abort(grpc.StatusCode[e.code], str(e))
        except LogError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return result

    async def acknowledge_alert(
        self,
        request: service_pb2.AcknowledgeAlertRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> alert_pb2.Alert:
        """AcknowledgeAlert: answered once the acknowledgement is durable. An admin, or a
        writer of the alert's team, may."""
        found = self.alerts.book.get(request.alert_id)
        if found is not None and not who.can_write(found.team):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"alert {request.alert_id} is team {found.team!r}'s: acknowledging it takes an "
                "admin token or a writer token of that team",
            )
        alert = await self._durably(
            context, lambda: self.alerts.acknowledge(request.alert_id, request.by)
        )
        audit.info(
            "alert acknowledged: alert=%s team=%s by=%s token=%s",
            alert.alert_id,
            safe(alert.team),
            safe(request.by),
            who.describe(),
        )
        return alert_message(alert)

    async def create_silence(
        self,
        request: service_pb2.CreateSilenceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
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
        if not who.can_write(wanted.team):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "a silence takes an admin token, or a writer token of the silence's team "
                "(a silence without a team mutes every team's alerts: admin only)",
            )
        created = await self._durably(context, lambda: self.alerts.create_silence(wanted))
        audit.info(
            "silence created: silence=%s team=%s pipeline=%s by=%s token=%s",
            created.silence_id,
            safe(created.team) or "*",
            safe(created.pipeline_id) or "*",
            safe(created.created_by),
            who.describe(),
        )
        return silence_message(created)

    async def list_silences(
        self,
        request: service_pb2.ListSilencesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> service_pb2.ListSilencesResponse:
        """ListSilences: those that have not ended, soonest ending first."""
        team = await self._scope(request.team, who, context)
        found = self.alerts.current_silences(team)
        return service_pb2.ListSilencesResponse(silences=[silence_message(s) for s in found])

    async def delete_silence(
        self,
        request: service_pb2.DeleteSilenceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> alert_pb2.Silence:
        """DeleteSilence: ends it now; answered once that is durable."""
        existing = self.alerts.silences.get(request.silence_id)
        if existing is not None and not who.can_write(existing.team):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"silence {request.silence_id} is not of this token's team: ending it takes an "
                "admin token or a writer token of its team",
            )
        ended = await self._durably(
            context, lambda: self.alerts.delete_silence(request.silence_id, request.by)
        )
        audit.info(
            "silence ended: silence=%s team=%s by=%s token=%s",
            ended.silence_id,
            safe(ended.team) or "*",
            safe(request.by),
            who.describe(),
        )
        return silence_message(ended)

    async def list_alert_history(
        self,
        request: service_pb2.ListAlertHistoryRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        who: Principal,
    ) -> service_pb2.ListAlertHistoryResponse:
        """ListAlertHistory: the latest events, newest first."""
        if request.limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must not be negative")
        team = await self._scope(request.team, who, context)
        events = self.alerts.book.history(team, request.limit or DEFAULT_HISTORY)
        return service_pb2.ListAlertHistoryResponse(events=[event_message(e) for e in events])


_UNDECODABLE = "the request is not a valid protobuf message of the expected type"


RETRY_METADATA = "pipewarden-retry-ms"
"""Trailing metadata of a RESOURCE_EXHAUSTED that is a matter of load (a rate, a cap on
streams, the ingest queue), not of the request: the milliseconds after which to send it again.
Without it, RESOURCE_EXHAUSTED means the request itself is too large."""


async def _retry_later(context: Context, message: str, seconds: float) -> None:
    """End the call with RESOURCE_EXHAUSTED and the hint to retry in `seconds`."""
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        trailing_metadata=((RETRY_METADATA, str(max(1, round(seconds * 1000)))),),
    )


class _Refused(Exception):
    """Ends a stream with a status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _own(who: Principal) -> str | None:
    """The only team a principal may ingest for, or None for any."""
    return None if who.admin else who.team


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
