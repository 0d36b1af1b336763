"""The read methods: pipelines, teams, anomalies, alerts, silences and their history, and
WatchAlerts. Every answer comes from the fleet (server/partition/fleet.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from pipewarden.server.alerting.convert import alert_message, event_message, silence_message
from pipewarden.server.alerting.feed import FeedOverflow
from pipewarden.server.alerting.model import CRITICAL, HIGH, MEDIUM
from pipewarden.server.api.auth import Principal
from pipewarden.server.api.calls import Context, check_severity
from pipewarden.server.api.convert import (
    anomaly,
    decode_token,
    encode_token,
    pipeline_health,
    team_metrics,
)
from pipewarden.server.api.guard import Guard
from pipewarden.server.base import metrics
from pipewarden.server.partition.fleet import Fleet
from pipewarden.v1 import alert_pb2, anomaly_pb2, health_pb2, service_pb2

__all__ = ["DEFAULT_HISTORY", "DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "ReadMethods"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DEFAULT_HISTORY = 100


class ReadMethods:
    """The methods that change nothing."""

    def __init__(self, fleet: Fleet, guard: Guard) -> None:
        self.fleet = fleet
        self.guard = guard

    async def get_pipeline_health(
        self, request: service_pb2.GetPipelineHealthRequest, context: Context, who: Principal
    ) -> health_pb2.PipelineHealth:
        """GetPipelineHealth."""
        if not request.pipeline_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pipeline_id is required")
        state = self.fleet.pipeline(request.pipeline_id)
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
        self, request: service_pb2.ListPipelineHealthRequest, context: Context, who: Principal
    ) -> service_pb2.ListPipelineHealthResponse:
        """ListPipelineHealth: pages in pipeline_id order; the token names the last id sent, so
        pipelines added while paging do not shift the pages."""
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        team = await self.guard.scope(request.team, who, context)
        after = ""
        if request.page_token:
            decoded = decode_token(request.page_token, team)
            if decoded is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "page_token is not one this server gave for this team filter; "
                    "start again without it",
                )
            after = decoded or ""
        states, more = self.fleet.page(team, after, size)
        response = service_pb2.ListPipelineHealthResponse(
            pipelines=[pipeline_health(p) for p in states]
        )
        if more and states:
            response.next_page_token = encode_token(team, states[-1].pipeline_id)
        return response

    async def get_team_metrics(
        self, request: service_pb2.GetTeamMetricsRequest, context: Context, who: Principal
    ) -> health_pb2.TeamMetrics:
        """GetTeamMetrics."""
        if not request.team:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "team is required")
        await self.guard.scope(request.team, who, context)
        totals = self.fleet.team_totals(request.team)
        if totals is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no team {request.team!r}: no event has named it"
            )
        return team_metrics(request.team, totals)

    async def list_team_metrics(
        self, request: service_pb2.ListTeamMetricsRequest, context: Context, who: Principal
    ) -> service_pb2.ListTeamMetricsResponse:
        """ListTeamMetrics."""
        teams = []
        for team in self.fleet.teams():
            if not who.can_read(team):
                continue
            totals = self.fleet.team_totals(team)
            if totals is not None:
                teams.append(team_metrics(team, totals))
        return service_pb2.ListTeamMetricsResponse(teams=teams)

    async def list_anomalies(
        self, request: service_pb2.ListAnomaliesRequest, context: Context, who: Principal
    ) -> service_pb2.ListAnomaliesResponse:
        """ListAnomalies: the current anomalies, most severe first."""
        if request.min_severity not in anomaly_pb2.Severity.values():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"min_severity {request.min_severity} is not a known Severity",
            )
        team = await self.guard.scope(request.team, who, context)
        found = self.fleet.anomalies(
            team=team, pipeline_id=request.pipeline_id, min_severity=request.min_severity
        )
        return service_pb2.ListAnomaliesResponse(anomalies=[anomaly(c) for c in found])

    async def list_alerts(
        self, request: service_pb2.ListAlertsRequest, context: Context, who: Principal
    ) -> service_pb2.ListAlertsResponse:
        """ListAlerts: open before resolved, most severe first."""
        await check_severity(request.min_severity, context)
        if request.state not in alert_pb2.AlertState.values():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"state {request.state} is not a known AlertState"
            )
        team = await self.guard.scope(request.team, who, context)
        found = self.fleet.alerts(team=team, min_severity=request.min_severity, state=request.state)
        return service_pb2.ListAlertsResponse(alerts=[alert_message(a) for a in found])

    async def get_routed_alerts(
        self, request: service_pb2.GetRoutedAlertsRequest, context: Context, who: Principal
    ) -> alert_pb2.RoutedAlerts:
        """GetRoutedAlerts: open alerts by team, then severity."""
        routed = alert_pb2.RoutedAlerts()
        scope = await self.guard.scope(request.team, who, context)
        for team, by_severity in self.fleet.routed(scope).items():
            group = routed.teams[team]
            for severity, field in ((CRITICAL, group.critical), (HIGH, group.high),
                                    (MEDIUM, group.medium)):  # fmt: skip
                field.extend(alert_message(a) for a in by_severity.get(severity, ()))
        return routed

    async def watch_alerts(
        self, request: service_pb2.WatchAlertsRequest, context: Context, who: Principal
    ) -> AsyncIterator[alert_pb2.AlertEvent]:
        """WatchAlerts: events as they happen (once durable), filtered. A watcher that falls
        behind by watch_queue_size events is ended with RESOURCE_EXHAUSTED."""
        await check_severity(request.min_severity, context)
        team = await self.guard.scope(request.team, who, context)
        subscription = self.fleet.watch(team, request.min_severity)
        metrics.ALERT_WATCHERS.inc()
        try:
            # Headers now, so that a client knows it is subscribed before the first event.
            await context.send_initial_metadata(())
            async for event in subscription:
                yield event_message(event)
        except FeedOverflow:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this watcher fell more than {subscription.maxsize} events behind and was "
                "dropped so that it slows nobody: reconnect, and use ListAlerts to catch up",
            )
        finally:
            subscription.close()
            metrics.ALERT_WATCHERS.dec()

    async def list_silences(
        self, request: service_pb2.ListSilencesRequest, context: Context, who: Principal
    ) -> service_pb2.ListSilencesResponse:
        """ListSilences: those that have not ended, soonest ending first."""
        team = await self.guard.scope(request.team, who, context)
        found = self.fleet.silences(team)
        return service_pb2.ListSilencesResponse(silences=[silence_message(s) for s in found])

    async def list_alert_history(
        self, request: service_pb2.ListAlertHistoryRequest, context: Context, who: Principal
    ) -> service_pb2.ListAlertHistoryResponse:
        """ListAlertHistory: the latest events, newest first."""
        if request.limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must not be negative")
        team = await self.guard.scope(request.team, who, context)
        events = self.fleet.history(team, request.limit or DEFAULT_HISTORY)
        return service_pb2.ListAlertHistoryResponse(events=[event_message(e) for e in events])
