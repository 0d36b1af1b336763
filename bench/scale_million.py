"""The `scale` section with a fleet of 1,000,000 pipelines (minutes): `make bench-scale`.

Not part of a plain `make bench`; run by name (`python -m bench scale-1m`). The 10,000 and
100,000 points are measured again in the same run, so that the ratios compare like with like.
"""

from __future__ import annotations

from bench import scale
from bench.common import Context, SectionResult

__all__ = ["NAME", "TITLE", "run"]

NAME = "scale-1m"
TITLE = "Fleet size up to 1,000,000 pipelines: new pipelines, stop and restart"
SIZES = (10_000, 100_000, 1_000_000)


def run(ctx: Context) -> SectionResult:
    """The `scale` section's measurements at 10,000, 100,000 and 1,000,000 pipelines."""
    sizes = scale.QUICK_SIZES if ctx.quick else SIZES
    return scale.run_sizes(ctx, SectionResult(NAME, TITLE), sizes)
