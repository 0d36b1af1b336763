"""`python -m bench [--quick] [SECTION...]`: run the benchmarks, print a table, write JSON.

A section is a module with NAME, TITLE and `run(ctx: Context) -> SectionResult`; add it to
SECTIONS below and it can be run by name. Without names every section runs, in this order.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from rich.console import Console

from bench import (
    alerts,
    fsync,
    ingest,
    latency,
    load,
    memory,
    notify,
    overload,
    queries,
    recovery,
    report,
    scale,
    scale_million,
)
from bench.common import Context, SectionResult
from pipewarden.server.core import compiled

SECTIONS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        ingest, latency, alerts, queries, memory, fsync, recovery, scale, notify, load, overload
    )
}  # fmt: skip
"""Every section, by name, in the order a full run takes them."""
EXTRA: dict[str, ModuleType] = {scale_million.NAME: scale_million}
"""Sections that run only when named (minutes each): `make bench-scale`."""

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
OUT = HERE / "out"


def _git_commit() -> str | None:
    """The commit under test, with "+dirty" when the server's code differs from it."""

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=HERE, capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "--short", "HEAD")
    if head is None or not head.stdout.strip():
        return None
    changed = git("status", "--porcelain", "--", "../server", "../pipewarden", "../notifiers")
    dirty = changed is not None and bool(changed.stdout.strip())
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Pipewarden's benchmarks. Ratios measured side by side are the figures to "
        "watch; absolute numbers depend on the machine and are context.",
    )
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"sections to run (default: all but {', '.join(EXTRA)}): {', '.join(SECTIONS)}",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"where to write the JSON results (default: {RESULTS.relative_to(HERE.parent)} "
        f"for a full run of every section, {OUT.relative_to(HERE.parent)}/results.json "
        "otherwise, so that a partial or quick run never replaces the full results)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also sample Pipewarden with py-spy in one extra, unmeasured run where a section "
        "supports it (ingest, recovery; recovery also does when a start misses its target); "
        f"stacks and hot spots go to {OUT.relative_to(HERE.parent)}/",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a figure misses its target"
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS and s not in EXTRA]
    if unknown:
        known = ", ".join([*SECTIONS, *EXTRA])
        parser.error(f"unknown section {', '.join(unknown)}; known: {known}")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections; return the exit status."""
    args = _parse(argv)
    # SIGTERM as an exception, so that every `finally` runs and no server is left behind.
    signal.signal(signal.SIGTERM, _terminate)
    names = list(dict.fromkeys(args.sections)) or list(SECTIONS)
    full = not args.quick and names == list(SECTIONS)
    out_path: Path = args.out or (RESULTS if full else OUT / "results.json")
    # Piped (make bench | tee), rich would wrap the table at 80 columns: give it room.
    console = Console(width=None if sys.stdout.isatty() else 160, log_path=False)
    OUT.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "hot_path": compiled.status(),
        "quick": args.quick,
        "sections_run": names,
        "load_average_start": os.getloadavg(),
    }
    results: list[SectionResult] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pipewarden-bench-") as tmp:
        for name in names:
            module = SECTIONS.get(name) or EXTRA[name]
            ctx = Context(
                quick=args.quick,
                console=console,
                workdir=Path(tmp) / name,
                logdir=OUT,
                profile=args.profile,
            )
            ctx.workdir.mkdir()
            console.rule(f"[bold]{module.TITLE}")
            started = time.perf_counter()
            try:
                res: SectionResult = module.run(ctx)
            except Exception as e:
                console.print(f"[red]section {name} failed:[/]\n{traceback.format_exc()}")
                res = SectionResult(name, module.TITLE, error=f"{type(e).__name__}: {e}")
            res.seconds = time.perf_counter() - started
            results.append(res)
    meta["seconds"] = time.perf_counter() - began
    meta["load_average_end"] = os.getloadavg()
    caption = (
        f"{meta['date']}  Python {meta['python']}  {meta['cpu_count']} CPUs  "
        f"commit {meta['git_commit']}  hot path {meta['hot_path']}  "
        f"{'quick  ' if args.quick else ''}"
        f"load {meta['load_average_start'][0]:.1f} -> {meta['load_average_end'][0]:.1f}  "
        f"{meta['seconds']:.0f}s"
    )
    console.print()
    console.print(report.table(results, caption))
    report.write(out_path, report.document(results, meta))
    console.print(f"results written to {out_path}")
    if any(r.error for r in results):
        return 1
    if args.strict and any(f.passed is False for r in results for f in r.figures):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
