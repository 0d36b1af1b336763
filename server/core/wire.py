"""Logged ingest requests decoded straight from their bytes into rows, for replay.

A replay spends most of its time reading the events of logged requests: through protobuf's
Python objects, every field read is a call. This reads the wire format of an `IngestRequest` in
one pass (compiled with the hot path) and makes each applied event's Row as `convert` and `row`
would from the parsed message, for the plain case: every field known, set at most once where it
is a message, with values that `convert` accepts. Anything else (an unknown field, a negative
varint, a repeated Timestamp, an event `convert` would refuse, bytes that are not UTF-8, a
truncated message) makes the whole request decode to None, and the caller parses it with
protobuf as before. `tests/test_wire.py` checks that, whatever the bytes, the rows are the ones
protobuf and `convert` give, or None.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from pipewarden.server.core.model import FAILED
from pipewarden.server.core.validation import _STATUSES, event_time
from pipewarden.server.core.validation import MAX_DURATION_SECONDS as _MAX_DURATION_SECONDS
from pipewarden.server.core.validation import MAX_SECONDS as _MAX_SECONDS
from pipewarden.server.core.validation import MIN_SECONDS as _MIN_SECONDS

if TYPE_CHECKING:
    from pipewarden.server.core.ingest import Row

__all__ = ["decode_rows"]

_EXECUTIONS = 1 << 3 | 2  # IngestRequest.executions: field 1, length-delimited
_UPSTREAM = 9 << 3 | 2  # PipelineExecution.upstream_pipeline_ids
_LABEL = 10 << 3 | 2  # PipelineExecution.labels, an entry
_NANOS = 999_999_999
_INT32_MAX = (1 << 31) - 1


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, next position); the value is -1 when the varint is cut off, or when it is 2**63
    or more (a negative number, left to protobuf)."""
    result = 0
    shift = 0
    while pos < end:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result if result < 1 << 63 else -1), pos
        shift += 7
        if shift > 63:
            return -1, pos
    return -1, pos


def _time(data: bytes, pos: int, end: int) -> tuple[bool, int, int]:
    """A Timestamp's or Duration's (ok, seconds, nanos)."""
    seconds = nanos = 0
    while pos < end:
        key, pos = _varint(data, pos, end)
        if key != 1 << 3 and key != 2 << 3:
            return False, 0, 0
        value, pos = _varint(data, pos, end)
        if value < 0:
            return False, 0, 0
        if key == 1 << 3:
            seconds = value
        else:
            nanos = value
    return pos == end, seconds, nanos


def _entry(data: bytes, pos: int, end: int, labels: dict[str, str]) -> bool:
    """One map entry of labels into `labels`; False when it is not a plain one."""
    key = value = ""
    while pos < end:
        tag, pos = _varint(data, pos, end)
        if tag != 1 << 3 | 2 and tag != 2 << 3 | 2:
            return False
        size, pos = _varint(data, pos, end)
        if size < 0 or pos + size > end:
            return False
        text = data[pos : pos + size].decode()
        pos += size
        if tag == 1 << 3 | 2:
            key = text
        else:
            value = text
    labels[key] = value
    return True


def _execution(
    data: bytes,
    pos: int,
    end: int,
    received: float,
    max_error: int,
    label_sets: dict[bytes, dict[str, str]],
    upstream_sets: dict[bytes, tuple[str, ...]],
) -> Row | None:
    """The Row of the PipelineExecution in data[pos:end], or None. Its labels are the dict in
    `label_sets` for the same bytes when there is one (one object for all the events of a
    request that carry the same labels, which marshal then writes once), and so is its tuple of
    upstream pipelines in `upstream_sets`."""
    execution_id = pipeline_id = team = error = ""
    status = records = 0
    started = finished = lasted = False
    s_sec = s_nanos = f_sec = f_nanos = d_sec = d_nanos = 0
    ups_at = ups_end = -1  # the upstream ids, while they come one after another
    labels_at = labels_end = -1  # the labels' entries, while they come one after another
    while pos < end:
        key_at = pos
        key, pos = _varint(data, pos, end)
        if key < 0:
            return None
        field = key >> 3
        kind = key & 7
        if kind == 0:
            value, pos = _varint(data, pos, end)
            if value < 0:
                return None
            if field == 4:
                if value > _INT32_MAX:
                    return None
                status = value
            elif field == 8:
                records = value
            else:
                return None
            continue
        if kind != 2:
            return None
        size, pos = _varint(data, pos, end)
        if size < 0 or pos + size > end:
            return None
        stop = pos + size
        if field == 1:
            execution_id = data[pos:stop].decode()
        elif field == 2:
            pipeline_id = data[pos:stop].decode()
        elif field == 3:
            team = data[pos:stop].decode()
        elif field == 5:
            ok, s_sec, s_nanos = _time(data, pos, stop)
            if started or not ok:
                return None
            started = True
        elif field == 6:
            ok, f_sec, f_nanos = _time(data, pos, stop)
            if finished or not ok:
                return None
            finished = True
        elif field == 7:
            ok, d_sec, d_nanos = _time(data, pos, stop)
            if lasted or not ok:
                return None
            lasted = True
        elif field == 9:
            if ups_at < 0:
                ups_at = key_at
            elif ups_end != key_at:
                return None  # upstream ids split by other fields: left to protobuf
            ups_end = stop
        elif field == 10:
            if labels_at < 0:
                labels_at = key_at
            elif labels_end != key_at:
                return None  # labels split by other fields: left to protobuf
            labels_end = stop
        elif field == 11:
            error = data[pos:stop].decode()
        else:
            return None
        pos = stop
    if pos != end:
        return None
    labels: dict[str, str] | None = None
    if labels_at < 0:
        labels = {}
    else:
        raw = data[labels_at:labels_end]
        labels = label_sets.get(raw)
        if labels is None:
            labels = {}
            at = labels_at
            while at < labels_end:  # each: its tag, its size, the entry
                tag, at = _varint(data, at, labels_end)
                size, at = _varint(data, at, labels_end)
                if tag != _LABEL or size < 0 or at + size > labels_end:
                    return None
                if not _entry(data, at, at + size, labels):
                    return None
                at += size
            label_sets[raw] = labels
    upstream: tuple[str, ...] = ()
    if ups_at >= 0:
        raw = data[ups_at:ups_end]
        known = upstream_sets.get(raw)
        if known is not None:
            upstream = known
        else:
            ids: list[str] = []
            at = ups_at
            while at < ups_end:  # each: its tag, its size, the id
                tag, at = _varint(data, at, ups_end)
                size, at = _varint(data, at, ups_end)
                if tag != _UPSTREAM or size < 0 or at + size > ups_end:
                    return None
                ids.append(data[at : at + size].decode())
                at += size
            upstream = upstream_sets[raw] = tuple(ids)
    # What convert checks, in the same terms; a refusal is left to it.
    if not execution_id or execution_id.isspace():
        return None
    if not pipeline_id or pipeline_id.isspace() or not team or team.isspace():
        return None
    if status not in _STATUSES:
        return None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    if started:
        if not (_MIN_SECONDS <= s_sec <= _MAX_SECONDS and s_nanos <= _NANOS):
            return None
        started_at = s_sec + s_nanos * 1e-9
    if finished:
        if not (_MIN_SECONDS <= f_sec <= _MAX_SECONDS and f_nanos <= _NANOS):
            return None
        finished_at = f_sec + f_nanos * 1e-9
    if lasted:
        if not (d_sec <= _MAX_DURATION_SECONDS and d_nanos <= _NANOS):
            return None
        duration = d_sec + d_nanos * 1e-9
    if started_at is not None and finished_at is not None:
        if finished_at < started_at:
            return None
        if duration is None:
            duration = finished_at - started_at
    if status == FAILED:
        if len(error) > max_error:
            error = error[:max_error]
    else:
        error = ""
    when = event_time(status, started_at, finished_at, duration, received)
    intern = sys.intern
    return (
        execution_id,
        intern(pipeline_id),
        intern(team),
        status,
        started_at,
        finished_at,
        duration,
        records,
        upstream,
        labels,
        error,
        when,
    )


def decode_rows(request: bytes, mask: bytes, received: float, max_error: int) -> list[Row] | None:
    """The Rows of the events of a logged IngestRequest that its mask marks (all of them when
    the mask is empty), as `convert(..., check_limits=False)` and `row` make them with
    `max_error` as the limit on error messages; None when any of them is not the plain case."""
    rows: list[Row] = []
    label_sets: dict[bytes, dict[str, str]] = {}
    upstream_sets: dict[bytes, tuple[str, ...]] = {}
    end = len(request)
    pos = 0
    i = 0
    try:
        while pos < end:
            key, pos = _varint(request, pos, end)
            if key != _EXECUTIONS:
                return None
            size, pos = _varint(request, pos, end)
            if size < 0 or pos + size > end:
                return None
            stop = pos + size
            if not mask or (i < len(mask) and mask[i]):
                r = _execution(request, pos, stop, received, max_error, label_sets, upstream_sets)
                if r is None:
                    return None
                rows.append(r)
            elif i >= len(mask):
                return None
            pos = stop
            i += 1
    except UnicodeDecodeError:
        return None
    if mask and i != len(mask):
        return None
    return rows
