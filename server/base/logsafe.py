"""Client strings made safe for the server's log: one line per entry, whatever a client sends.

A team, a pipeline id, an acknowledger or a silence's author is the client's text. Written into
a log line as is, a newline in it forges a second entry (an audit line nobody wrote), a carriage
return or an escape sequence rewrites what a terminal shows, a lone surrogate (possible in
OpenLineage's JSON) makes the log handler fail, and a long one floods the log. Every log call
that interpolates such a string passes it through `safe`.
"""

from __future__ import annotations

__all__ = ["MAX_LOGGED_LENGTH", "safe"]

MAX_LOGGED_LENGTH = 300
"""Longest client string written into a log line; a longer one is cut, with its length said."""


def safe(text: str, limit: int = MAX_LOGGED_LENGTH) -> str:
    """`text` for a log line: control, format and other unprintable characters (newlines, ANSI
    escapes, bidirectional overrides, lone surrogates) escaped as Python's repr escapes them
    (`\\n`, `\\x1b`, `\\u202e`, `\\ud800`), backslashes doubled so an escape cannot be faked,
    and cut to `limit` characters."""
    cut = len(text) > limit
    shown = text[:limit] if cut else text
    if not shown.isprintable() or "\\" in shown:
        # repr escapes exactly what is not printable; its quotes are dropped, and a quote it
        # escaped (when the text holds both kinds) is left escaped: harmless.
        shown = repr(shown)[1:-1]
    if cut:
        shown += f"…[{len(text)} characters]"
    return shown
