"""The gRPC face of Pipewarden: the method table of pipewarden.v1.PipelineMonitor.

Methods are registered with raw-bytes deserializers so that an undecodable request is answered
with INVALID_ARGUMENT (grpc's own deserializer would say INTERNAL), and so that ingestion can log
the request's bytes as received. Every method passes the guard first (server/api/guard.py:
authentication, rate limits, the caps on streams); reads and alert changes then check their
request's strings and times (server/api/requestlimits.py) before anything changes. The methods
themselves live by concern: ingest (server/api/ingest.py), reads (server/api/reads.py) and
alert changes (server/api/alertwrites.py); conversions in server/api/convert.py, and the one
table of domain errors to status codes in server/api/status.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from pipewarden.server.api.admission import IngestTurns
from pipewarden.server.api.alertwrites import AlertWrites
from pipewarden.server.api.auth import Authenticator, Principal
from pipewarden.server.api.calls import Context, parse, serialize
from pipewarden.server.api.guard import Guard
from pipewarden.server.api.ingest import IngestMethods
from pipewarden.server.api.limits import RateLimiter, StreamGate
from pipewarden.server.api.reads import ReadMethods
from pipewarden.server.api.requestlimits import RequestLimits
from pipewarden.server.api.status import RETRY_METADATA
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.partition.fleet import Fleet, IngestTarget
from pipewarden.v1 import service_pb2

__all__ = ["RETRY_METADATA", "SERVICE_NAME", "PipelineMonitorService", "ServicerConfig"]

SERVICE_NAME = "pipewarden.v1.PipelineMonitor"

M = TypeVar("M", bound=Message)


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
    """Implements pipewarden.v1.PipelineMonitor: ingest goes to `target`, everything else to
    `fleet`."""

    def __init__(
        self,
        target: IngestTarget,
        fleet: Fleet,
        config: ServicerConfig,
        *,
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
        self.guard = Guard(self.auth, self.rates, self.streams)
        self.turns = IngestTurns(config.ingest_queue_bytes)
        """Ingest requests are applied one at a time, each in its turn (server/api/admission.py)."""
        self.config = config
        self.request_limits = RequestLimits(config.limits)
        self.ingesting = IngestMethods(
            target,
            self.guard,
            self.turns,
            max_executions_per_request=config.limits.max_executions_per_request,
            max_in_flight_per_stream=config.max_in_flight_per_stream,
        )
        self.reads = ReadMethods(fleet, self.guard)
        self.writes = AlertWrites(fleet)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The method handlers, to add to a grpc.aio server."""
        ser = serialize
        guard, reads, writes = self.guard, self.reads, self.writes
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Ingest": grpc.unary_unary_rpc_method_handler(
                guard.unary(self.ingesting.ingest, "Ingest"), None, ser
            ),
            "StreamIngest": grpc.stream_stream_rpc_method_handler(
                guard.streaming(self.ingesting.stream_ingest, "StreamIngest"), None, ser
            ),
            "GetPipelineHealth": self._unary(
                service_pb2.GetPipelineHealthRequest, reads.get_pipeline_health
            ),
            "ListPipelineHealth": self._unary(
                service_pb2.ListPipelineHealthRequest, reads.list_pipeline_health
            ),
            "GetTeamMetrics": self._unary(
                service_pb2.GetTeamMetricsRequest, reads.get_team_metrics
            ),
            "ListTeamMetrics": self._unary(
                service_pb2.ListTeamMetricsRequest, reads.list_team_metrics
            ),
            "ListAnomalies": self._unary(service_pb2.ListAnomaliesRequest, reads.list_anomalies),
            "ListAlerts": self._unary(service_pb2.ListAlertsRequest, reads.list_alerts),
            "GetRoutedAlerts": self._unary(
                service_pb2.GetRoutedAlertsRequest, reads.get_routed_alerts
            ),
            "WatchAlerts": grpc.unary_stream_rpc_method_handler(
                guard.streaming(self._watch_alerts, "WatchAlerts"), None, ser
            ),
            "AcknowledgeAlert": self._unary(
                service_pb2.AcknowledgeAlertRequest, writes.acknowledge_alert
            ),
            "CreateSilence": self._unary(service_pb2.CreateSilenceRequest, writes.create_silence),
            "ListSilences": self._unary(service_pb2.ListSilencesRequest, reads.list_silences),
            "DeleteSilence": self._unary(service_pb2.DeleteSilenceRequest, writes.delete_silence),
            "ListAlertHistory": self._unary(
                service_pb2.ListAlertHistoryRequest, reads.list_alert_history
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
        return grpc.unary_unary_rpc_method_handler(self.guard.unary(handle, name), None, serialize)

    async def _watch_alerts(
        self, raw: bytes, context: Context, who: Principal
    ) -> AsyncIterator[Any]:
        request = await self._parse_checked(service_pb2.WatchAlertsRequest, raw, context)
        async for event in self.reads.watch_alerts(request, context, who):
            yield event

    async def _parse_checked(self, request_type: type[M], raw: bytes, context: Context) -> M:
        """The request, once its strings and times are within their limits (requestlimits);
        otherwise the call ends with INVALID_ARGUMENT, before anything changes."""
        request = await parse(request_type, raw, context)
        problem = self.request_limits.problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return request
