"""How client commands print: the consoles, JSON, and the words and colours of numbers, times,
severities and kinds.

Everything a server sends (pipeline ids, teams, messages) is text, never markup: it is escaped
before it reaches a console, and only the markup written here styles it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipewarden.names import kind_name, severity_name
from pipewarden.v1 import execution_pb2

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "NARROW",
    "SEVERITY_STYLE",
    "LazyConsole",
    "ago",
    "as_dict",
    "as_json",
    "console",
    "count",
    "err",
    "escape",
    "kind",
    "print_two_lines",
    "rate",
    "seconds",
    "severity",
    "status",
    "streak",
    "when",
]


class LazyConsole:
    """A rich Console made on first use: `pipewarden serve` never needs one, and importing rich
    would add to the time from start to SERVING."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return getattr(self._console, name)


console = LazyConsole()
"""Standard output."""
err = LazyConsole(stderr=True)
"""Standard error: errors, warnings and progress."""

NARROW = 140
"""Terminals narrower than this get anomalies and alerts on two lines each: in a table, the
message column would be squeezed to nothing."""

SEVERITY_STYLE = {3: "bold red", 2: "red", 1: "yellow"}
"""The colour of each severity (by number)."""


def escape(text: str) -> str:
    """`text` as rich shows it literally (square brackets are not markup)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def as_json(msg: Any) -> str:
    """A protobuf message as indented JSON."""
    from google.protobuf import json_format

    return json_format.MessageToJson(msg, indent=2)


def as_dict(msg: Any) -> dict[str, Any]:
    """A protobuf message as a dict for JSON, with every field (also those at their default)."""
    from google.protobuf import json_format

    result: dict[str, Any] = json_format.MessageToDict(
        msg, always_print_fields_with_no_presence=True
    )
    return result


def rate(value: float, judged: int) -> str:
    """A success rate, in red below 90% and yellow below 98%; "-" when nothing was judged."""
    if not judged:
        return "-"
    text = f"{value * 100:.1f}%"
    if value < 0.9:
        return f"[red]{text}[/]"
    if value < 0.98:
        return f"[yellow]{text}[/]"
    return text


def seconds(s: float) -> str:
    """A duration in seconds, minutes or hours; "-" for none."""
    if s <= 0:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def count(n: float) -> str:
    """A count with k, M or G."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= limit:
            return f"{n / limit:.1f}{suffix}"
    return f"{n:.0f}"


def ago(t: float) -> str:
    """How long ago Unix time `t` was ("in …" for a time to come)."""
    delta = time.time() - t
    if delta < 0:
        return "in " + seconds(max(-delta, 0.1))
    return seconds(max(delta, 0.1)) + " ago"


def when(ts: Any) -> str:
    """A Timestamp in UTC, and how long ago."""
    t = ts.ToSeconds()
    return f"{datetime.fromtimestamp(t, UTC):%Y-%m-%d %H:%M:%S} UTC ({ago(t)})"


def streak(n: int) -> str:
    """Failures in a row, in red from three."""
    if n >= 3:
        return f"[red]{n}[/]"
    return str(n)


def status(number: int) -> str:
    """An ExecutionStatus in colour ("-" for none)."""
    full = execution_pb2.ExecutionStatus.Name(number)  # type: ignore[arg-type]
    name = full.removeprefix("EXECUTION_STATUS_").lower()
    colour = {"failed": "red", "succeeded": "green", "unspecified": "dim"}.get(name)
    name = "-" if name == "unspecified" else name
    return f"[{colour}]{name}[/]" if colour else name


def severity(number: int) -> str:
    """A severity's name in its colour."""
    name = severity_name(number)
    style = SEVERITY_STYLE.get(number, "")
    return f"[{style}]{name}[/]" if style else name


def kind(number: int) -> str:
    """An anomaly kind in words: `consecutive failures`."""
    return kind_name(number).replace("_", " ")


def print_two_lines(title: str, items: Sequence[tuple[str, str, str, str, str]]) -> None:
    """(severity markup, pipeline, team, what markup, message markup) as a heading line and the
    message indented under it. The pipeline and team are text; the rest is markup, whose
    callers escape what the server sent."""
    console.print(f"[bold]{escape(title)}[/]\n")
    for shown, pipeline, team, what, message in items:
        console.print(f"{shown}  [bold]{escape(pipeline)}[/] ({escape(team)})  {what}")
        console.print(f"    {message}\n", highlight=False)
