"""Reading py-spy's collapsed stacks (`py-spy record --format raw`): where the time went.

Each line of the file is `frame;frame;...;frame COUNT`, outermost first, a frame being
`function (file:line)`. `summarize` ranks functions by self time (samples where the function
was the innermost frame) and also gives their total time (samples where it was on the stack).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["summarize"]

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _function(frame: str) -> str:
    """`function (path/to/file.py:123)` as `function (file.py)`, lines merged."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{m['fn']} ({Path(m['file']).name})"


def summarize(path: Path, top: int = 20) -> list[dict[str, Any]]:
    """The `top` functions by self time: function, self and total as shares of all samples."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_function(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for fn in set(frames):
            total[fn] += n
    if not samples:
        return []
    return [
        {"function": fn, "self": n / samples, "total": total[fn] / samples, "samples": n}
        for fn, n in own.most_common(top)
    ]
