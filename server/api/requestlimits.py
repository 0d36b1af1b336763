"""What a gRPC request may carry: the limit of every string field in one table, and the range of
every Timestamp and Duration, checked by walking the request's descriptor before anything
changes.

Executions are the exception: each one of an IngestRequest is checked on its own (see
`validation`), so that a bad one is a rejected row and the rest of the request still counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from pipewarden.server.alerting.silences import MAX_COMMENT_LENGTH, MAX_NAME_LENGTH
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.validation import duration_problem, timestamp_problem
from pipewarden.v1 import execution_pb2

__all__ = [
    "DEFAULT_STRING_LENGTH",
    "MAX_GENERATED_ID_LENGTH",
    "RequestLimits",
    "page_token_length",
    "string_limits",
]

MAX_GENERATED_ID_LENGTH: Final = 64
"""Longest alert_id or silence_id a request may name (the server's are 14 characters)."""
DEFAULT_STRING_LENGTH: Final = 256
"""The limit of a string field the table does not name (a test keeps the table complete)."""

_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_PER_ROW = frozenset({execution_pb2.PipelineExecution.DESCRIPTOR.full_name})
"""Messages checked elsewhere, one by one, where a bad one is a rejected row."""


def page_token_length(limits: IngestLimits) -> int:
    """Longest page token the server gives: base64 of a version, a team and a pipeline id, each
    character up to four bytes of UTF-8."""
    raw = 3 + 4 * (limits.max_team_length + limits.max_id_length) + 2
    return 4 * -(-raw // 3)


def string_limits(limits: IngestLimits) -> dict[str, int]:
    """The longest value, in characters, of every string field of the requests, by field name:
    a name means the same thing in every request that has it."""
    return {
        "team": limits.max_team_length,
        "pipeline_id": limits.max_id_length,
        "alert_id": MAX_GENERATED_ID_LENGTH,
        "silence_id": MAX_GENERATED_ID_LENGTH,
        "by": MAX_NAME_LENGTH,
        "created_by": MAX_NAME_LENGTH,
        "comment": MAX_COMMENT_LENGTH,
        "page_token": page_token_length(limits),
    }


class RequestLimits:
    """Checks a request against the string limits and the time range."""

    def __init__(self, limits: IngestLimits) -> None:
        self.strings: Mapping[str, int] = string_limits(limits)
        """The table: field name -> longest value in characters."""

    def problem(self, request: Message) -> str | None:
        """What is wrong with `request`, naming the field (by its path) and the limit; None
        when every string and time in it is within its limit."""
        return self._walk(request, "")

    def _walk(self, msg: Message, prefix: str) -> str | None:
        for field, value in msg.ListFields():
            name = prefix + field.name
            sub = field.message_type
            if sub is not None and sub.GetOptions().map_entry:
                found = self._map(field, sub, value, name)
            elif sub is not None and field.is_repeated:
                found = _first(self._message(sub, v, f"{name}[{i}]") for i, v in enumerate(value))
            elif sub is not None:
                found = self._message(sub, value, name)
            elif field.type != FieldDescriptor.TYPE_STRING:
                continue
            elif field.is_repeated:
                found = _first(
                    self._string(field.name, v, f"{name}[{i}]") for i, v in enumerate(value)
                )
            else:
                found = self._string(field.name, value, name)
            if found:
                return found
        return None

    def _message(self, desc: Descriptor, value: Message, name: str) -> str | None:
        full = desc.full_name
        if full == _TIMESTAMP:
            return timestamp_problem(name, value.seconds, value.nanos)  # type: ignore[attr-defined]
        if full == _DURATION:
            return duration_problem(name, value.seconds, value.nanos)  # type: ignore[attr-defined]
        if full in _PER_ROW:
            return None
        return self._walk(value, name + ".")

    def _map(self, field: FieldDescriptor, entry: Descriptor, value: Any, name: str) -> str | None:
        keys, values = entry.fields_by_name["key"], entry.fields_by_name["value"]
        for key, item in value.items():
            found = None
            if keys.type == FieldDescriptor.TYPE_STRING:
                found = self._string(field.name, key, f"{name} key {key[:40]!r}")
            if found is None and values.message_type is not None:
                found = self._message(values.message_type, item, f"{name}[{key!r}]")
            elif found is None and values.type == FieldDescriptor.TYPE_STRING:
                found = self._string(field.name, item, f"{name}[{key!r}]")
            if found:
                return found
        return None

    def _string(self, field: str, value: str, name: str) -> str | None:
        limit = self.strings.get(field, DEFAULT_STRING_LENGTH)
        if len(value) > limit:
            return f"{name} is longer than {limit} characters (it has {len(value)})"
        return None


def _first(problems: Iterable[str | None]) -> str | None:
    return next((p for p in problems if p), None)
