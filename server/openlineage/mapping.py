"""OpenLineage events to execution events: parsing and the mapping, with no I/O.

| OpenLineage                                   | Pipewarden                                |
|-----------------------------------------------|-------------------------------------------|
| `run.runId`                                   | `execution_id`                            |
| `job.namespace` + `/` + `job.name`            | `pipeline_id`                             |
| `ownership` job facet, owner `team:NAME`      | `team` (else namespace_teams, else the    |
|                                               | default team; a known pipeline keeps its) |
| START, RUNNING / COMPLETE / FAIL / ABORT      | RUNNING / SUCCEEDED / FAILED / CANCELLED  |
| `eventTime` of the START (or first RUNNING)   | `started_at`, from the run in flight      |
| `eventTime` of the terminal event             | `finished_at`                             |
| sum of `outputStatistics.rowCount` of outputs | `records_processed`                       |
| `errorMessage` run facet's `message`          | `error_message`                           |
| producers of the inputs, `jobDependencies`    | `upstream_pipeline_ids`                   |
| upstream jobs, the `parent` run facet's job   |                                           |

Every string read is bounded (EventLimits: the gRPC limits of the PipelineExecution field it
becomes, and `openlineage.max_dataset_name_length` for datasets), as are the datasets an event
names, and every time must lie in years 1 to 9999 in UTC: beyond, the event is refused with the
reason (BadEventError, a 400), before anything changes.

The start time comes from the pipeline's state: a START is ingested as a RUNNING event, which
the log keeps and the pipeline remembers as in flight (in snapshots too), so the terminal event
finds it after a restart. When no START was seen, the duration is unknown (the run still counts).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from pipewarden.server.base.errors import InvalidArgument
from pipewarden.server.base.logsafe import safe
from pipewarden.server.core.model import CANCELLED, FAILED, RUNNING, SUCCEEDED
from pipewarden.server.core.shards import ShardSet
from pipewarden.server.openlineage.settings import OpenLineageSettings
from pipewarden.times import MAX_SECONDS, MIN_SECONDS, timestamp
from pipewarden.v1.execution_pb2 import PipelineExecution

__all__ = [
    "STATUSES",
    "BadEventError",
    "DatasetKey",
    "EventLimits",
    "LineageEvent",
    "ProducerLookup",
    "Translator",
    "parse_event",
    "pipeline_id",
]

log = logging.getLogger(__name__)

STATUSES = {
    "START": RUNNING,
    "RUNNING": RUNNING,
    "COMPLETE": SUCCEEDED,
    "FAIL": FAILED,
    "ABORT": CANCELLED,
}
"""Event types that change a run's state; OTHER (or none) only carries lineage."""
_EVENT_TYPES = frozenset({*STATUSES, "OTHER"})

DatasetKey = tuple[str, str]
"""A dataset's (namespace, name)."""

_MAX_INT64 = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class EventLimits:
    """Bounds on what one event may carry: a string beyond its bound, or more datasets, is
    refused with the reason (an error message is cut instead, as over gRPC)."""

    max_id_length: int = 256
    """Longest run id and pipeline id (job namespace + "/" + name), as execution_id and
    pipeline_id over gRPC; also the jobs named by the parent and jobDependencies facets."""
    max_team_length: int = 128
    """Longest team named by the ownership facet (`team:NAME`)."""
    max_label_length: int = 256
    """Longest label value read from the jobType facet."""
    max_upstreams: int = 256
    """Most jobs in the jobDependencies facet's upstream list."""
    max_error_message_length: int = 4096
    """Longer errorMessage facets are kept, cut to this length."""
    max_datasets: int = 1000
    """Most datasets (inputs and outputs together) one event may name."""
    max_dataset_name_length: int = 1024
    """Longest dataset namespace, and longest dataset name."""


class BadEventError(InvalidArgument):
    """The body is not an OpenLineage event Pipewarden can use; the message says why."""


@dataclass(frozen=True)
class LineageEvent:
    """What Pipewarden reads of one OpenLineage event."""

    kind: str
    """run, job (a static JobEvent) or dataset (a DatasetEvent)."""
    event_type: str = ""
    """START, RUNNING, COMPLETE, FAIL, ABORT or OTHER, as sent; empty when absent."""
    event_time: float | None = None
    """Unix seconds."""
    run_id: str = ""
    namespace: str = ""
    name: str = ""
    owner_team: str | None = None
    """The first `team:NAME` owner of the ownership job facet."""
    inputs: tuple[DatasetKey, ...] = ()
    outputs: tuple[DatasetKey, ...] = ()
    records: int = 0
    error_message: str = ""
    parent: tuple[str, str] | None = None
    """The parent run facet's job (namespace, name)."""
    depends_on: tuple[tuple[str, str], ...] = ()
    """The jobDependencies run facet's upstream jobs."""
    labels: Mapping[str, str] = field(default_factory=dict)


def pipeline_id(namespace: str, name: str) -> str:
    """The pipeline of an OpenLineage job."""
    return f"{namespace}/{name}"


def parse_event(doc: Any, limits: EventLimits | None = None) -> LineageEvent:
    """Read a decoded JSON body; BadEventError names the field that is wrong. Lenient about
    what Pipewarden does not use (schemaURL, producer, unknown facets)."""
    limits = limits if limits is not None else EventLimits()
    if not isinstance(doc, dict):
        raise BadEventError(f"the body is a JSON {type(doc).__name__}, not an OpenLineage event")
    if "run" not in doc:
        if "job" in doc:
            job = _object(doc, "job")
            event = LineageEvent(
                kind="job",
                namespace=_string(job, "namespace", "job.namespace"),
                name=_string(job, "name", "job.name"),
                owner_team=_owner_team(_facets(job, "job.facets")),
                inputs=_datasets(doc, "inputs"),
                outputs=_datasets(doc, "outputs"),
            )
            _check_limits(event, limits)
            return event
        if "dataset" in doc:
            return LineageEvent(kind="dataset")
        raise BadEventError("not an OpenLineage event: it has no run, job or dataset")
    event_type = doc.get("eventType") or ""
    if not isinstance(event_type, str):
        raise BadEventError(f"eventType is {event_type!r}, not a string")
    event_type = event_type.upper()
    if event_type and event_type not in _EVENT_TYPES:
        raise BadEventError(
            f"eventType {event_type!r} is not one of {', '.join(sorted(_EVENT_TYPES))}"
        )
    run = _object(doc, "run")
    job = _object(doc, "job")
    run_facets = _facets(run, "run.facets")
    job_facets = _facets(job, "job.facets")
    event = LineageEvent(
        kind="run",
        event_type=event_type,
        event_time=_time(doc.get("eventTime")),
        run_id=_string(run, "runId", "run.runId"),
        namespace=_string(job, "namespace", "job.namespace"),
        name=_string(job, "name", "job.name"),
        owner_team=_owner_team(job_facets),
        inputs=_datasets(doc, "inputs"),
        outputs=_datasets(doc, "outputs"),
        records=_records(doc),
        error_message=_error_message(run_facets),
        parent=_parent(run_facets),
        depends_on=_depends_on(run_facets),
        labels=_labels(job_facets),
    )
    _check_limits(event, limits)
    if len(event.error_message) > limits.max_error_message_length:
        event = replace(event, error_message=event.error_message[: limits.max_error_message_length])
    return event


def _check_limits(event: LineageEvent, limits: EventLimits) -> None:
    """Raise BadEventError for the first string or list of `event` beyond its bound."""
    pid = pipeline_id(event.namespace, event.name)
    longest = limits.max_id_length
    if len(pid) > longest:
        raise BadEventError(
            f"pipeline_id is {len(pid)} characters long (job.namespace/job.name); "
            f"the limit is {longest}"
        )
    if len(event.run_id) > longest:
        raise BadEventError(
            f"run.runId is {len(event.run_id)} characters long; the limit is {longest}"
        )
    if event.owner_team is not None and len(event.owner_team) > limits.max_team_length:
        raise BadEventError(
            f"the ownership facet's team is {len(event.owner_team)} characters long; "
            f"the limit is {limits.max_team_length}"
        )
    for key, value in event.labels.items():
        if len(value) > limits.max_label_length:
            raise BadEventError(
                f"the jobType facet's {key} is {len(value)} characters long; "
                f"the limit is {limits.max_label_length}"
            )
    named = len(event.inputs) + len(event.outputs)
    if named > limits.max_datasets:
        raise BadEventError(
            f"the event names {named} datasets (inputs and outputs); the limit is "
            f"{limits.max_datasets} (openlineage.max_datasets_per_event)"
        )
    for where, datasets in (("inputs", event.inputs), ("outputs", event.outputs)):
        for i, (namespace, name) in enumerate(datasets):
            for part, text in (("namespace", namespace), ("name", name)):
                if len(text) > limits.max_dataset_name_length:
                    raise BadEventError(
                        f"{where}[{i}].{part} is {len(text)} characters long; the limit is "
                        f"{limits.max_dataset_name_length} (openlineage.max_dataset_name_length)"
                    )
    if len(event.depends_on) > limits.max_upstreams:
        raise BadEventError(
            f"the jobDependencies facet names {len(event.depends_on)} upstream jobs; "
            f"the limit is {limits.max_upstreams}"
        )
    jobs = [("the parent facet's job", event.parent)] if event.parent is not None else []
    jobs.extend((f"jobDependencies.upstream[{i}]", job) for i, job in enumerate(event.depends_on))
    for where, (namespace, name) in jobs:
        upstream = pipeline_id(namespace, name)
        if len(upstream) > longest:
            raise BadEventError(
                f"{where} makes a pipeline id of {len(upstream)} characters; the limit is {longest}"
            )


class ProducerLookup(Protocol):
    """Which pipelines write a dataset (see server.openlineage.producers)."""

    def producers_of(self, dataset: DatasetKey) -> Sequence[str]:
        """The pipelines known to write `dataset`, oldest first."""
        ...


class Translator:
    """Maps a run event to a PipelineExecution, reading (never changing) the pipelines' state
    for the team and the start time, and the producer map for upstream pipelines."""

    def __init__(
        self,
        settings: OpenLineageSettings,
        shards: ShardSet,
        producers: ProducerLookup,
        *,
        max_upstreams: int = 256,
        max_id_length: int = 256,
    ) -> None:
        self.settings = settings
        self.shards = shards
        self.producers = producers
        self.max_upstreams = max_upstreams
        self.max_id_length = max_id_length
        """Producers with longer ids (learned under other limits) are not named upstream."""
        self._warned: set[str] = set()

    def team_of(self, event: LineageEvent) -> str:
        """The team: a known pipeline keeps its own; else the ownership facet's, the
        namespace's or the default."""
        state = self.shards.get(pipeline_id(event.namespace, event.name))
        if state is not None:
            changed = event.owner_team and event.owner_team != state.team
            if changed and state.pipeline_id not in self._warned:
                self._warned.add(state.pipeline_id)
                log.warning(
                    "OpenLineage job %s is owned by team:%s, but its pipeline belongs to "
                    "team %s since its first event; it keeps that team",
                    safe(state.pipeline_id),
                    safe(event.owner_team or ""),
                    safe(state.team),
                )
            return state.team
        if event.owner_team:
            return event.owner_team
        return self.settings.namespace_teams.get(event.namespace, self.settings.default_team)

    def upstream_of(self, event: LineageEvent) -> list[str]:
        """Upstream pipelines: the producers of the inputs, the jobs it depends on, its
        parent's job; never itself."""
        own = pipeline_id(event.namespace, event.name)
        found: dict[str, None] = {}
        for dataset in event.inputs:
            for producer in self.producers.producers_of(dataset):
                if len(producer) <= self.max_id_length:
                    found[producer] = None
        for namespace, name in event.depends_on:
            found[pipeline_id(namespace, name)] = None
        if event.parent is not None and self.settings.parent_as_upstream:
            found[pipeline_id(*event.parent)] = None
        found.pop(own, None)
        return list(found)[: self.max_upstreams]

    def to_execution(self, event: LineageEvent) -> PipelineExecution | None:
        """The execution event for a run event; None for an event that changes no run state
        (OTHER, or no event type)."""
        status = STATUSES.get(event.event_type)
        if status is None or event.kind != "run":
            return None
        if event.event_time is None:
            raise BadEventError(f"eventTime is required on a {event.event_type} event")
        pid = pipeline_id(event.namespace, event.name)
        state = self.shards.get(pid)
        remembered = None
        if state is not None and state.in_flight:
            remembered = state.in_flight.get(event.run_id)
        msg = PipelineExecution(
            execution_id=event.run_id,
            pipeline_id=pid,
            team=self.team_of(event),
            status=status,  # type: ignore[arg-type]
            records_processed=event.records,
            upstream_pipeline_ids=self.upstream_of(event),
            labels=dict(event.labels),
        )
        if status == RUNNING:
            # A RUNNING after the START keeps the START's time as the run's start.
            msg.started_at.CopyFrom(timestamp(remembered or event.event_time))
            return msg
        msg.finished_at.CopyFrom(timestamp(event.event_time))
        # Clocks of different hosts may disagree: a start after the finish is no duration.
        if remembered is not None and remembered <= event.event_time:
            msg.started_at.CopyFrom(timestamp(remembered))
        if status == FAILED:
            msg.error_message = event.error_message
        return msg


def _object(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise BadEventError(f"{key} is required and must be an object")
    return value


def _string(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadEventError(f"{where} is required and must be a non-empty string")
    return value


def _facets(doc: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    value = doc.get("facets")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadEventError(f"{where} must be an object")
    return value


def _time(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadEventError(f"eventTime is {value!r}, not an ISO 8601 string")
    try:
        t = datetime.fromisoformat(value)
    except ValueError as e:
        raise BadEventError(f"eventTime {value!r} is not an ISO 8601 date and time") from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    try:
        since = t.astimezone(UTC) - _EPOCH
    except OverflowError as e:
        raise BadEventError(f"eventTime {value!r} is outside years 1 to 9999 once in UTC") from e
    seconds = since.days * 86_400 + since.seconds
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise BadEventError(f"eventTime {value!r} is outside years 1 to 9999 once in UTC")
    if seconds == MAX_SECONDS:
        return float(seconds)  # a fraction of the last second would round past the range
    return seconds + since.microseconds / 1e6


def _datasets(doc: Mapping[str, Any], key: str) -> tuple[DatasetKey, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadEventError(f"{key} must be a list")
    out: list[DatasetKey] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadEventError(f"{key}[{i}] must be an object")
        out.append(
            (
                _string(item, "namespace", f"{key}[{i}].namespace"),
                _string(item, "name", f"{key}[{i}].name"),
            )
        )
    return tuple(out)


def _records(doc: Mapping[str, Any]) -> int:
    outputs = doc.get("outputs")
    if not isinstance(outputs, list):
        return 0
    total = 0
    for i, item in enumerate(outputs):
        facets = item.get("outputFacets") if isinstance(item, dict) else None
        stats = facets.get("outputStatistics") if isinstance(facets, dict) else None
        if not isinstance(stats, dict) or stats.get("rowCount") is None:
            continue
        count = stats["rowCount"]
        where = f"outputs[{i}].outputFacets.outputStatistics.rowCount"
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int):
            raise BadEventError(f"{where} is {count!r}, not a whole number")
        if count < 0:
            raise BadEventError(f"{where} is {count}; it must not be negative")
        total += count
    if total > _MAX_INT64:
        raise BadEventError("the outputs' rowCount adds up to more than a 64-bit integer holds")
    return total


def _owner_team(job_facets: Mapping[str, Any]) -> str | None:
    ownership = job_facets.get("ownership")
    owners = ownership.get("owners") if isinstance(ownership, dict) else None
    if not isinstance(owners, list):
        return None
    for owner in owners:
        name = owner.get("name") if isinstance(owner, dict) else None
        if isinstance(name, str) and name.startswith("team:") and name[5:].strip():
            return name[5:].strip()
    return None


def _error_message(run_facets: Mapping[str, Any]) -> str:
    facet = run_facets.get("errorMessage")
    message = facet.get("message") if isinstance(facet, dict) else None
    return message if isinstance(message, str) else ""


def _job_ref(value: Any) -> tuple[str, str] | None:
    job = value.get("job") if isinstance(value, dict) else None
    if not isinstance(job, dict):
        return None
    namespace, name = job.get("namespace"), job.get("name")
    if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
        return namespace, name
    return None


def _parent(run_facets: Mapping[str, Any]) -> tuple[str, str] | None:
    return _job_ref(run_facets.get("parent"))


def _depends_on(run_facets: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    facet = run_facets.get("jobDependencies")
    upstream = facet.get("upstream") if isinstance(facet, dict) else None
    if not isinstance(upstream, list):
        return ()
    return tuple(ref for item in upstream if (ref := _job_ref(item)) is not None)


def _labels(job_facets: Mapping[str, Any]) -> dict[str, str]:
    facet = job_facets.get("jobType")
    if not isinstance(facet, dict):
        return {}
    labels = {}
    for key, label in (("integration", "integration"), ("jobType", "job_type")):
        value = facet.get(key)
        if isinstance(value, str) and value:
            labels[label] = value
    return labels
