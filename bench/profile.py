"""Reading py-spy's collapsed stacks (`py-spy record --format raw`): where the time went.

Each line of the file is `frame;frame;...;frame COUNT`, outermost first, a frame being
`function (file:line)`. `summarize` ranks functions by self time (samples where the function
was the innermost frame), or by total time (samples where it was on the stack), and gives both;
`phases` splits the samples by which of some marker functions each stack passes through.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["phases", "summarize"]

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _function(frame: str) -> str:
    """`function (path/to/file.py:123)` as `function (file.py)`, lines merged."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{m['fn']} ({Path(m['file']).name})"


def _stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """Each stack's functions, outermost first, and its sample count; nothing when unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_function(f) for f in stack.split(";") if f]
        if frames:
            yield frames, int(count)


def summarize(path: Path, top: int = 20, *, by: str = "self") -> list[dict[str, Any]]:
    """The `top` functions by self time (or by total time, `by="total"`): function, self and
    total as shares of all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for frames, n in _stacks(path):
        samples += n
        own[frames[-1]] += n
        for fn in set(frames):
            total[fn] += n
    if not samples:
        return []
    ranked = (own if by == "self" else total).most_common(top)
    return [
        {
            "function": fn,
            "self": own[fn] / samples,
            "total": total[fn] / samples,
            "samples": own[fn],
        }
        for fn, _ in ranked
    ]


def phases(path: Path, markers: Sequence[tuple[str, Sequence[str]]]) -> dict[str, int]:
    """Samples per phase: a stack counts for the first phase in `markers` one of whose functions
    (`function (file.py)`, as `summarize` names them) is on it, or else for "other"."""
    counts = {name: 0 for name, _ in markers} | {"other": 0}
    for frames, n in _stacks(path):
        on = set(frames)
        phase = next((name for name, fns in markers if not on.isdisjoint(fns)), "other")
        counts[phase] += n
    return counts
