"""`python -m eval [--quick] [CONFIG...]`: replay a labelled scenario through every detector
configuration, score it, print the tables and write eval/results.json."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from eval import report
from eval.configs import BASELINE, CONFIGS, DEFAULT
from eval.diagnose import Prober
from eval.feed import STEP_SECONDS, Step, steps
from eval.replay import Raised, replay
from eval.scenario import Scenario, ScenarioSpec, build
from eval.score import score_traps, score_type, scored_types
from eval.targets import check

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
OUT = HERE / "out"

# Set before the worker processes fork, so they share the steps instead of receiving them.
_SCENARIO: Scenario | None = None
_STEPS: list[Step] = []

_Replayed = tuple[str, dict[str, list[Raised]], dict[str, str], float, int, int]


def _replay(name: str) -> _Replayed:
    """One configuration's replay (in a worker): what it raised, what it saw of each faulty
    pipeline soon after the fault began, its time, its number of evaluations and how many
    pipelines it flagged during the warm-up."""
    assert _SCENARIO is not None
    config = CONFIGS[name]
    prober = Prober(_SCENARIO)
    began = time.perf_counter()
    recorder, _, _ = replay(
        _STEPS, config.settings, config.enabled, _SCENARIO.spec.scored_from, prober
    )
    seconds = time.perf_counter() - began
    return (
        name,
        recorder.raised,
        prober.views,
        seconds,
        recorder.evaluations,
        recorder.warmup_flagged,
    )


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE, capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "../server"],
            cwd=HERE, capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not head.stdout.strip():
        return None
    return head.stdout.strip() + ("+dirty" if changed.stdout.strip() else "")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description="Pipewarden's anomaly-detection evaluation: a labelled scenario replayed "
        "through the ingest path with each detector configuration, scored per fault type.",
    )
    parser.add_argument(
        "configs",
        nargs="*",
        metavar="CONFIG",
        help=f"configurations to run (default: all): {', '.join(CONFIGS)}",
    )
    parser.add_argument("--quick", action="store_true", help="a smaller, shorter scenario")
    parser.add_argument("--seed", type=int, help="scenario seed (default 4)")
    parser.add_argument("--pipelines", type=int, help="fleet size (default 500)")
    parser.add_argument("--days", type=float, help="simulated days (default 28)")
    parser.add_argument(
        "--jobs", type=int, default=min(4, os.cpu_count() or 1), help="worker processes"
    )
    parser.add_argument("--examples", type=int, default=3, help="examples per fault type")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"where to write the JSON (default: {RESULTS.relative_to(HERE.parent)} for a full "
        f"default run, {OUT.relative_to(HERE.parent)}/results.json otherwise)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; return the exit status."""
    global _SCENARIO, _STEPS
    args = _parse(argv)
    console = Console(width=None if sys.stdout.isatty() else 170, log_path=False)
    spec = ScenarioSpec()
    if args.quick:
        spec = ScenarioSpec(pipelines=200, days=28)
    changes = {k: getattr(args, k) for k in ("seed", "pipelines", "days")}
    spec = ScenarioSpec(**{**spec.__dict__, **{k: v for k, v in changes.items() if v is not None}})
    names = list(dict.fromkeys(args.configs)) or list(CONFIGS)
    standard = not args.quick and all(v is None for v in changes.values())
    out_path: Path = args.out or (
        RESULTS if standard and names == list(CONFIGS) else OUT / "results.json"
    )

    began = time.perf_counter()
    _SCENARIO = build(spec)
    _STEPS = steps(_SCENARIO)
    events = sum(len(s.request.executions) for s in _STEPS if s.request is not None)
    roles: dict[str, int] = {}
    for p in _SCENARIO.pipelines:
        key = f"{p.role}:{p.kind}" if p.kind else p.role
        roles[key] = roles.get(key, 0) + 1
    console.print(
        f"scenario: {spec.pipelines} pipelines, {spec.days:g} days, seed {spec.seed}, "
        f"{events:,} events in {len(_STEPS):,} steps of {STEP_SECONDS:.0f}s "
        f"(built in {time.perf_counter() - began:.1f}s); replaying {len(names)} configurations"
    )

    results: dict[str, _Replayed] = {}
    if args.jobs > 1 and len(names) > 1:
        # Fork, so the workers inherit the steps; the slowest (every detector) go first.
        ordered = sorted(names, key=lambda n: CONFIGS[n].enabled is not None)
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(args.jobs, len(names)), mp_context=context) as pool:
            for done in pool.map(_replay, ordered):
                results[done[0]] = done
    else:
        for name in names:
            results[name] = _replay(name)

    outcomes: list[report.Outcome] = []
    for name in names:
        _, raised, views, seconds, evaluations, warmup = results[name]
        config = CONFIGS[name]
        enabled = None if config.enabled is None else sorted(config.enabled)
        types = {t: score_type(t, _SCENARIO, raised, seen=views) for t in scored_types(enabled)}
        traps = score_traps(_SCENARIO, raised)
        outcomes.append(report.Outcome(config, types, traps, seconds, evaluations, warmup))
    by_name = {o.config.name: o for o in outcomes}
    checks = []
    if DEFAULT in by_name and BASELINE in by_name:
        d, b = by_name[DEFAULT], by_name[BASELINE]
        checks = check(d.types, d.traps, b.types)

    seconds = time.perf_counter() - began
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "seconds": seconds,
        "scenario": {
            "pipelines": spec.pipelines,
            "days": spec.days,
            "seed": spec.seed,
            "start": datetime.fromtimestamp(spec.start, UTC).isoformat(),
            "scored_from": datetime.fromtimestamp(spec.scored_from, UTC).isoformat(),
            "end": datetime.fromtimestamp(spec.end, UTC).isoformat(),
            "warmup_days": spec.warmup_days,
            "events": events,
            "step_seconds": STEP_SECONDS,
            "roles": dict(sorted(roles.items())),
        },
    }
    caption = (
        f"{meta['date']}  seed {spec.seed}  {spec.pipelines} pipelines  {spec.days:g} days  "
        f"{events:,} events  commit {meta['git_commit']}  {seconds:.0f}s"
    )
    console.print()
    report.print_report(console, outcomes, checks, caption, args.examples)
    report.write(out_path, report.document(outcomes, checks, meta))
    console.print(f"results written to {out_path}")
    if args.strict and checks and not all(c.passed for c in checks):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
