"""Silences: checked when created, matched against alerts, forgotten once they end."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

from pipewarden.server.alerting.model import KIND_NAMES, Alert, Silence
from pipewarden.server.base.errors import InvalidArgument
from pipewarden.times import MAX_SECONDS, MIN_SECONDS

__all__ = ["MAX_COMMENT_LENGTH", "MAX_NAME_LENGTH", "Silences", "check_silence"]

MAX_NAME_LENGTH = 256
"""Longest team, pipeline id or author of a silence."""
MAX_COMMENT_LENGTH = 4096
"""Longest comment."""


def check_silence(silence: Silence, now: float) -> None:
    """Raise InvalidArgument, saying what is wrong, unless `silence` may be
    created at `now`."""

    def bad(message: str) -> InvalidArgument:
        return InvalidArgument(message)

    if silence.kind and silence.kind not in KIND_NAMES:
        raise bad(f"kind {silence.kind} is not a known AnomalyKind")
    if not silence.created_by:
        raise bad("created_by is required: say who creates the silence")
    if silence.ends_at <= 0:
        raise bad("ends_at is required: a silence must end")
    for name, t in (("starts_at", silence.starts_at), ("ends_at", silence.ends_at)):
        if not MIN_SECONDS <= t <= MAX_SECONDS + 1:  # floats round the last second up
            raise bad(f"{name} is not between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
    if silence.ends_at <= silence.starts_at:
        raise bad("ends_at must be after starts_at: this silence ends before it starts")
    if silence.ends_at <= now:
        raise bad("ends_at is in the past: this silence would never mute anything")
    for name, value in (
        ("team", silence.team),
        ("pipeline_id", silence.pipeline_id),
        ("created_by", silence.created_by),
    ):
        if len(value) > MAX_NAME_LENGTH:
            raise bad(f"{name} is longer than {MAX_NAME_LENGTH} characters")
    if len(silence.comment) > MAX_COMMENT_LENGTH:
        raise bad(f"comment is longer than {MAX_COMMENT_LENGTH} characters")


class Silences:
    """The silences that have not ended, by id."""

    def __init__(self) -> None:
        self._by_id: dict[str, Silence] = {}

    def new_id(self) -> str:
        """A fresh silence id."""
        while True:
            candidate = "s-" + secrets.token_hex(6)
            if candidate not in self._by_id:
                return candidate

    def put(self, silence: Silence) -> None:
        """Add or replace a silence."""
        self._by_id[silence.silence_id] = silence

    def get(self, silence_id: str) -> Silence | None:
        """One silence, or None."""
        return self._by_id.get(silence_id)

    def muting(self, alert: Alert, now: float) -> Silence | None:
        """An active silence that matches `alert`, or None."""
        for s in self._by_id.values():
            if s.active(now) and s.matches(alert):
                return s
        return None

    def current(self, now: float, team: str = "") -> list[Silence]:
        """Silences that have not ended (and may match `team`'s alerts), soonest ending first."""
        return sorted(
            (
                s
                for s in self._by_id.values()
                if s.ends_at > now and (not team or not s.team or s.team == team)
            ),
            key=lambda s: (s.ends_at, s.silence_id),
        )

    def forget_ended(self, now: float) -> int:
        """Drop the silences that have ended; return how many."""
        ended = [k for k, s in self._by_id.items() if s.ends_at <= now]
        for k in ended:
            del self._by_id[k]
        return len(ended)

    def __iter__(self) -> Iterator[Silence]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
