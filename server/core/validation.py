"""Translate a protobuf PipelineExecution into an Execution, or say why it is refused.

An execution needs an id, a pipeline, a team and a status other than UNSPECIFIED; counts and
durations are not negative, it does not finish before it starts, its times lie within the
Timestamp range and not beyond the future skew, and its strings and lists within the size limits
of the configuration. Each reason names the field, the value and the rule, so the runner's
owner can fix it without reading the server's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.model import CANCELLED, FAILED, RUNNING, SUCCEEDED, Execution
from pipewarden.times import MAX_SECONDS, MIN_SECONDS
from pipewarden.v1.execution_pb2 import PipelineExecution

__all__ = [
    "MAX_DURATION_SECONDS",
    "MAX_SECONDS",
    "MIN_SECONDS",
    "convert",
    "duration_problem",
    "event_time",
    "format_time",
    "timestamp_problem",
    "too_far_ahead",
]

_STATUSES = frozenset({SUCCEEDED, FAILED, RUNNING, CANCELLED})
# The one range of client times, for every request: google.protobuf.Timestamp's documented
# range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z. Float seconds hold it (to
# within microseconds), and so do the snapshot's doubles; the encoder back to a Timestamp
# (pipewarden.times.timestamp) keeps the rounding of the very last second inside it.
MAX_DURATION_SECONDS: Final = 315_576_000_000
"""google.protobuf.Duration's documented bound, about 10,000 years, either sign."""


def format_time(t: float) -> str:
    """An event time as an ISO 8601 UTC string, for messages."""
    try:
        return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"{t:.0f}s since the epoch"


def timestamp_problem(name: str, seconds: int, nanos: int) -> str | None:
    """Why the Timestamp field `name` (seconds, nanos) is out of range, or None when it is in."""
    if MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos <= 999_999_999:
        return None
    return _bad_timestamp(name, seconds, nanos)


def duration_problem(name: str, seconds: int, nanos: int) -> str | None:
    """Why the Duration field `name` (seconds, nanos) is not a valid Duration, or None. The
    sign is the caller's rule."""
    s, n = seconds, nanos
    if abs(s) > MAX_DURATION_SECONDS or abs(n) > 999_999_999 or (s > 0 > n) or (s < 0 < n):
        return (
            f"{name} is not a valid Duration (seconds={s}, nanos={n}); it must lie within "
            f"±{MAX_DURATION_SECONDS} seconds, with nanos of the same sign"
        )
    return None


def _bad_timestamp(name: str, seconds: int, nanos: int) -> str:
    return (
        f"{name} is not a valid timestamp (seconds={seconds}, nanos={nanos}); "
        "it must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z "
        "with nanos from 0 to 999999999"
    )


def _bad_duration(s: int, n: int) -> str:
    return duration_problem("duration", s, n) or (
        f"duration is {s + n * 1e-9:g}s; it must not be negative"
    )


def convert(
    msg: PipelineExecution, received_at: float, limits: IngestLimits, *, check_limits: bool = True
) -> Execution | str:
    """The Execution for `msg`, or the reason it is refused.

    `received_at` (Unix seconds) stands in for the event time when the runner sent no times.
    With `check_limits` False (replaying the log, where the event was accepted once already) the
    size limits are not applied, so a lowered limit never drops what was acknowledged.
    """
    # The hot path of ingestion: every execution passes here, so fields are read once into
    # locals and the common case (nothing wrong, no labels) does as little as it can.
    execution_id = msg.execution_id
    pipeline_id = msg.pipeline_id
    team = msg.team
    status = msg.status
    records = msg.records_processed
    if not execution_id or execution_id.isspace():
        return "execution_id is required"
    if not pipeline_id or pipeline_id.isspace():
        return "pipeline_id is required"
    if not team or team.isspace():
        return "team is required"
    if status not in _STATUSES:
        if status == 0:
            return "status is required (it is EXECUTION_STATUS_UNSPECIFIED)"
        return f"status {status} is not a known ExecutionStatus"
    if records < 0:
        return f"records_processed is {records}; it must not be negative"

    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    # Reading an unset sub-message gives zeros, so HasField (which costs as much as the read)
    # is asked only when the values are zero: unset, or set to exactly the epoch or 0 seconds.
    ts = msg.started_at
    seconds, nanos = ts.seconds, ts.nanos
    if seconds or nanos or msg.HasField("started_at"):
        if not (MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos <= 999_999_999):
            return _bad_timestamp("started_at", seconds, nanos)
        started_at = seconds + nanos * 1e-9
    ts = msg.finished_at
    seconds, nanos = ts.seconds, ts.nanos
    if seconds or nanos or msg.HasField("finished_at"):
        if not (MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos <= 999_999_999):
            return _bad_timestamp("finished_at", seconds, nanos)
        finished_at = seconds + nanos * 1e-9
    d = msg.duration
    seconds, nanos = d.seconds, d.nanos
    if seconds or nanos or msg.HasField("duration"):
        if 0 <= seconds <= MAX_DURATION_SECONDS and 0 <= nanos <= 999_999_999:
            duration = seconds + nanos * 1e-9
        else:
            return _bad_duration(seconds, nanos)
    if started_at is not None and finished_at is not None:
        if finished_at < started_at:
            return (
                f"finished_at ({format_time(finished_at)}) is before started_at "
                f"({format_time(started_at)})"
            )
        if duration is None:
            duration = finished_at - started_at

    ups = msg.upstream_pipeline_ids
    upstream = tuple(ups) if ups else ()
    # Labels stay the message's own map: most runs repeat their pipeline's labels, and the
    # shard copies them only when it keeps them (see Shard.apply_terminal).
    labels = msg.labels
    if check_limits:
        # No string in a message can be longer than the message. So a small message needs no
        # look at each label and upstream id; only the team's own limit is lower.
        size = msg.ByteSize()
        if size > limits.small_message_bytes or len(team) > limits.max_team_length:
            # Nor can a label or upstream id be longer than what the ids leave of the message
            # (a character takes at least a byte): in most messages, none needs a look.
            rest = size - len(execution_id) - len(pipeline_id) - len(team)
            longest_id = limits.max_id_length
            if (
                len(execution_id) > longest_id
                or len(pipeline_id) > longest_id
                or len(team) > limits.max_team_length
                or len(upstream) > limits.max_upstreams
                or len(labels) > limits.max_labels
                or rest > longest_id
                or rest > limits.max_label_length
            ):
                reason = _check_limits(
                    execution_id, pipeline_id, team, upstream, labels, limits, rest
                )
                if reason:
                    return reason
            elif upstream and not all(upstream):
                return f"upstream_pipeline_ids[{upstream.index('')}] is empty"
        elif upstream and not all(upstream):
            return f"upstream_pipeline_ids[{upstream.index('')}] is empty"
    error_message = ""
    if status == FAILED:  # the only runs whose error is kept
        error_message = msg.error_message
        if len(error_message) > limits.max_error_message_length:
            error_message = error_message[: limits.max_error_message_length]

    when = event_time(status, started_at, finished_at, duration, received_at)
    if check_limits:
        # too_far_ahead's common case, here: the event time is never before the start.
        latest = received_at + limits.max_future_skew_seconds
        if when > latest or (finished_at is not None and finished_at > latest):
            reason = too_far_ahead(started_at, finished_at, when, received_at, limits)
            if reason:
                return reason
    return Execution(
        execution_id,
        pipeline_id,
        team,
        status,
        started_at,
        finished_at,
        duration,
        records,
        upstream,
        labels,
        error_message,
        when,
    )


def event_time(
    status: int,
    started_at: float | None,
    finished_at: float | None,
    duration: float | None,
    received_at: float,
) -> float:
    """When an event happened (Execution.event_time): a run in flight at its start; a finished
    one at its finish, else start + duration, else its start; without times, when the server
    received it. The one home of this rule (server/core/wire.py reads the log with it too)."""
    if status == RUNNING:
        # A run in flight happens at its start; its duration is not known yet.
        return started_at if started_at is not None else received_at
    if finished_at is not None:
        return finished_at
    if started_at is not None:
        return started_at + duration if duration is not None else started_at
    return received_at


def too_far_ahead(
    started_at: float | None,
    finished_at: float | None,
    when: float,
    received_at: float,
    limits: IngestLimits,
) -> str | None:
    """Why an event whose times lie beyond the server's clock by more than the allowed skew is
    refused, or None. A runner's clock may run a little ahead; a time years ahead is a bug, and
    it must not be counted as if it had happened (it would sort after every real run)."""
    latest = received_at + limits.max_future_skew_seconds
    if when <= latest and (finished_at is None or finished_at <= latest):
        return None  # the event time is never before the start: the common case ends here
    name, t = "started_at + duration", when
    if started_at is not None and started_at > latest:
        name, t = "started_at", started_at
    elif finished_at is not None and finished_at > latest:
        name, t = "finished_at", finished_at
    return (
        f"{name} ({format_time(t)}) is more than {limits.max_future_skew_seconds}s ahead of the "
        f"server's clock ({format_time(received_at)}); the limit is "
        "server.limits.max_future_skew_seconds"
    )


def _check_limits(
    execution_id: str,
    pipeline_id: str,
    team: str,
    upstream: tuple[str, ...],
    labels: Mapping[str, str],
    limits: IngestLimits,
    rest: int,
) -> str | None:
    """Why the event breaks a size limit, or None. `rest` bounds the length of every label and
    upstream id (the message's bytes less those of its ids)."""
    for name, value, limit in (
        ("execution_id", execution_id, limits.max_id_length),
        ("pipeline_id", pipeline_id, limits.max_id_length),
        ("team", team, limits.max_team_length),
    ):
        if len(value) > limit:
            return f"{name} is {len(value)} characters long; the limit is {limit}"
    if upstream:
        if len(upstream) > limits.max_upstreams:
            count, most = len(upstream), limits.max_upstreams
            return f"upstream_pipeline_ids has {count} entries; the limit is {most}"
        if not all(upstream) or (
            rest > limits.max_id_length and max(map(len, upstream)) > limits.max_id_length
        ):
            for i, up in enumerate(upstream):
                if not up:
                    return f"upstream_pipeline_ids[{i}] is empty"
                if len(up) > limits.max_id_length:
                    return (
                        f"upstream_pipeline_ids[{i}] is {len(up)} characters long; "
                        f"the limit is {limits.max_id_length}"
                    )
    if labels:
        if len(labels) > limits.max_labels:
            return f"labels has {len(labels)} entries; the limit is {limits.max_labels}"
        longest = limits.max_label_length
        if rest > longest and (
            max(map(len, labels)) > longest or max(map(len, labels.values())) > longest
        ):
            for key, value in labels.items():
                if len(key) > longest or len(value) > longest:
                    return f"label {key[:40]!r} is longer than {longest} characters"
    return None
