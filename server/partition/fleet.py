"""The fleet: what needs every partition, behind one narrow interface.

A partition (server/partition/engine.py) owns one slice of the fleet's pipelines. Reads that
span pipelines (listing pages, team metrics, every alert of a team), alert changes that may
belong to another partition's alert, WatchAlerts and silences go through `Fleet`; the API layer
sees nothing else. `StandaloneFleet` is the fleet of one partition (what `serve` runs); a
fleet of several nodes implements the same methods over them, and the detection and alerting
code does not change.

Each method says what it means across nodes. Writes are coroutines that return once the change
is durable where it was made.
"""

from __future__ import annotations

from typing import Protocol

from pipewarden.server.alerting.feed import Subscription
from pipewarden.server.alerting.model import Alert, AlertEvent, Silence
from pipewarden.server.core.ingest import IngestOutcome
from pipewarden.server.core.shards import PipelineState, TeamTotals
from pipewarden.server.detection.anomalies import CurrentAnomaly
from pipewarden.server.partition.engine import Partition
from pipewarden.v1 import service_pb2

__all__ = ["Fleet", "IngestTarget", "StandaloneFleet"]


class IngestTarget(Protocol):
    """Where ingest requests go: standalone, the one Partition (across nodes, a router to the
    partitions that own the request's pipelines)."""

    def ingest(
        self, raw: bytes, request: service_pb2.IngestRequest, team: str | None = None
    ) -> tuple[IngestOutcome, int]:
        """Apply the request at once (nothing awaits, so requests apply in the order they
        come); return its outcome and the position to pass to `wait_durable`. With `team`,
        events of other teams are rejected. LogError when the log cannot take it."""
        ...

    async def wait_durable(self, seq: int) -> None:
        """Return once what `ingest` returned `seq` for is durable; LogError if it cannot be."""
        ...


class Fleet(Protocol):
    """What needs the whole fleet."""

    def now(self) -> float:
        """The fleet's time (Unix seconds) that silences are judged against. Across nodes:
        any node's clock, the nodes' being kept in step."""
        ...

    # -- pipelines and teams ---------------------------------------------------------------------

    def pipeline(self, pipeline_id: str) -> PipelineState | None:
        """The pipeline's state, from the partition that owns it; None if no event named it."""
        ...

    def page(self, team: str, after: str, size: int) -> tuple[list[PipelineState], bool]:
        """Up to `size` pipelines (of `team`, or all with "") whose ids follow `after`, in id
        order, and whether more follow. Across nodes: a merge of each partition's page."""
        ...

    def teams(self) -> list[str]:
        """Every team some event named, sorted. Across nodes: the union."""
        ...

    def team_totals(self, team: str) -> TeamTotals | None:
        """The team's totals (pipelines, runs by status, sums) over all its pipelines; None
        for an unknown team. Across nodes: the sum of each partition's totals."""
        ...

    # -- anomalies and alerts --------------------------------------------------------------------

    def anomalies(
        self, *, team: str = "", pipeline_id: str = "", min_severity: int = 0
    ) -> list[CurrentAnomaly]:
        """Current anomalies that match, most severe first. Across nodes: merged in that
        order."""
        ...

    def alert(self, alert_id: str) -> Alert | None:
        """The alert, open or recently resolved, from the partition that raised it."""
        ...

    def alerts(self, *, team: str = "", min_severity: int = 0, state: int = 0) -> list[Alert]:
        """Alerts that match: open before resolved, most severe first. Across nodes: merged."""
        ...

    def routed(self, team: str = "") -> dict[str, dict[int, list[Alert]]]:
        """Open alerts by team, then severity. Across nodes: merged."""
        ...

    def history(self, team: str = "", limit: int = 100) -> list[AlertEvent]:
        """The latest alert events (of `team`, or all), newest first. Across nodes: merged by
        time."""
        ...

    def watch(self, team: str = "", min_severity: int = 0) -> Subscription:
        """A subscription to alert events from now on (each once durable), filtered; it is
        ended with FeedOverflow if it falls `maxsize` events behind. Across nodes: every
        partition's events."""
        ...

    async def acknowledge(self, alert_id: str, by: str) -> Alert:
        """Acknowledge the alert where it lives; return it once that is durable. NotFound,
        FailedPrecondition or InvalidArgument when it cannot be."""
        ...

    # -- silences (fleet-wide: one silence mutes alerts of every partition) ---------------------

    def silence(self, silence_id: str) -> Silence | None:
        """The silence, if it exists (ended or not)."""
        ...

    def silences(self, team: str = "") -> list[Silence]:
        """Silences that have not ended, soonest ending first."""
        ...

    async def create_silence(self, silence: Silence) -> Silence:
        """Add a silence (its id assigned) and mute what it matches in every partition; return
        it once durable. InvalidArgument when it cannot be created."""
        ...

    async def delete_silence(self, silence_id: str, by: str) -> Silence:
        """End a silence now in every partition; return it once durable. NotFound when no
        silence of that id has yet to end."""
        ...


class StandaloneFleet:
    """The fleet of one partition: every answer is that partition's."""

    def __init__(self, partition: Partition) -> None:
        self.partition = partition

    def now(self) -> float:
        """The partition's clock."""
        return self.partition.clock()

    def pipeline(self, pipeline_id: str) -> PipelineState | None:
        """From the partition's shards."""
        return self.partition.shards.get(pipeline_id)

    def page(self, team: str, after: str, size: int) -> tuple[list[PipelineState], bool]:
        """From the partition's shards."""
        return self.partition.shards.page(team, after, size)

    def teams(self) -> list[str]:
        """From the partition's shards."""
        return self.partition.shards.teams()

    def team_totals(self, team: str) -> TeamTotals | None:
        """From the partition's shards."""
        return self.partition.shards.team_totals(team)

    def anomalies(
        self, *, team: str = "", pipeline_id: str = "", min_severity: int = 0
    ) -> list[CurrentAnomaly]:
        """From the partition's anomaly store."""
        return self.partition.anomalies.list(
            team=team, pipeline_id=pipeline_id, min_severity=min_severity
        )

    def alert(self, alert_id: str) -> Alert | None:
        """From the partition's alert book."""
        return self.partition.alerts.book.get(alert_id)

    def alerts(self, *, team: str = "", min_severity: int = 0, state: int = 0) -> list[Alert]:
        """From the partition's alert book."""
        return self.partition.alerts.book.alerts(team=team, min_severity=min_severity, state=state)

    def routed(self, team: str = "") -> dict[str, dict[int, list[Alert]]]:
        """From the partition's alert book."""
        return self.partition.alerts.book.routed(team)

    def history(self, team: str = "", limit: int = 100) -> list[AlertEvent]:
        """From the partition's alert book."""
        return self.partition.alerts.book.history(team, limit)

    def watch(self, team: str = "", min_severity: int = 0) -> Subscription:
        """On the partition's alert feed, alerts.watch_queue_size events deep."""
        alerts = self.partition.alerts
        return alerts.feed.subscribe(team, min_severity, alerts.settings.watch_queue_size)

    async def acknowledge(self, alert_id: str, by: str) -> Alert:
        """In the partition's alert manager."""
        alert, seq = self.partition.alerts.acknowledge(alert_id, by)
        await self.partition.wait_durable(seq)
        return alert

    def silence(self, silence_id: str) -> Silence | None:
        """From the partition's silences."""
        return self.partition.alerts.silences.get(silence_id)

    def silences(self, team: str = "") -> list[Silence]:
        """From the partition's silences."""
        return self.partition.alerts.current_silences(team)

    async def create_silence(self, silence: Silence) -> Silence:
        """In the partition's alert manager."""
        created, seq = self.partition.alerts.create_silence(silence)
        await self.partition.wait_durable(seq)
        return created

    async def delete_silence(self, silence_id: str, by: str) -> Silence:
        """In the partition's alert manager."""
        ended, seq = self.partition.alerts.delete_silence(silence_id, by)
        await self.partition.wait_durable(seq)
        return ended
