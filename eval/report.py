"""The results: tables for people (rich) and a JSON document for tools."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from eval.configs import DEFAULT, Config
from eval.scenario import TRAP_KINDS
from eval.score import Miss, TrapScore, TypeScore, percentile
from eval.targets import Check

__all__ = ["Outcome", "document", "print_report", "write"]


@dataclass
class Outcome:
    """One configuration's scores."""

    config: Config
    types: dict[str, TypeScore]
    traps: TrapScore
    seconds: float
    evaluations: int
    warmup_flagged: int
    """Pipelines flagged during the warm-up (not scored)."""


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _delay(values: Sequence[float], digits: int = 0) -> str:
    mid, p90 = percentile(values, 50), percentile(values, 90)
    if mid is None or p90 is None:
        return "—"
    return f"{mid:.{digits}f} / {p90:.{digits}f}"


def _verdict(passed: bool) -> str:
    return "[bold green]PASS[/]" if passed else "[bold red]MISS[/]"


def detection_table(outcomes: Sequence[Outcome], caption: str = "") -> Table:
    """Per configuration and fault type: precision, recall, F1 and delay."""
    t = Table(title="Detection by fault type (pipelines)", caption=caption)
    for name, justify in (
        ("Configuration", "left"),
        ("Fault", "left"),
        ("Faulty", "right"),
        ("Detected", "right"),
        ("False pos.", "right"),
        ("FP on h/t/f/e", "right"),
        ("Precision", "right"),
        ("Recall", "right"),
        ("F1", "right"),
        ("Delay runs med/p90", "right"),
        ("Delay h med/p90", "right"),
    ):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for i, o in enumerate(outcomes):
        if i:
            t.add_section()
        for j, s in enumerate(o.types.values()):
            fp = s.fp_by_role
            t.add_row(
                f"[bold]{o.config.title}[/]" if j == 0 else "",
                s.fault,
                str(s.faulty),
                str(s.detected),
                str(s.false_positives),
                "/".join(str(fp.get(r, 0)) for r in ("healthy", "trap", "fault", "early")),
                _num(s.precision),
                _num(s.recall),
                _num(s.f1),
                _delay(s.delays_runs),
                _delay(s.delays_hours, 1),
            )
    return t


def trap_table(outcomes: Sequence[Outcome]) -> Table:
    """Per configuration: traps flagged (any anomaly kind, any time), by kind."""
    t = Table(title="Traps and healthy pipelines flagged (any anomaly, any time)")
    t.add_column("Configuration")
    for kind in TRAP_KINDS:
        t.add_column(kind.replace("_", " "), justify="right")
    t.add_column("all traps", justify="right")
    t.add_column("healthy", justify="right")
    for o in outcomes:
        tr = o.traps
        t.add_row(
            o.config.title,
            *(f"{a}/{b}" for a, b in (tr.by_kind[k] for k in TRAP_KINDS)),
            f"{tr.flagged}/{tr.traps} ({tr.share:.0%})",
            f"{tr.healthy_flagged}/{tr.healthy} "
            f"({tr.healthy_flagged / tr.healthy if tr.healthy else 0:.0%})",
        )
    return t


def target_table(checks: Sequence[Check]) -> Table:
    """The default configuration against the issue's targets."""
    t = Table(title="Targets (default configuration)")
    t.add_column("Target")
    t.add_column("Value", justify="right")
    t.add_column("Wanted", justify="right")
    t.add_column("Result", justify="center")
    for c in checks:
        t.add_row(c.name, _num(c.value), c.target, _verdict(c.passed))
    return t


def _natural_line(o: Outcome) -> str:
    slow = o.traps.natural_peer["slow_by_nature"]
    small = o.traps.natural_peer["small_by_nature"]
    return (
        f"{o.config.title}: HIGH_DURATION on {slow[0]}/{slow[1]} pipelines slow by nature, "
        f"LOW_RECORDS on {small[0]}/{small[1]} small by nature"
    )


def _examples(console: Console, o: Outcome, per_type: int) -> None:
    def show(label: str, misses: Sequence[Miss]) -> None:
        for m in misses[:per_type]:
            what = f"{m.role} {m.kind}".strip()
            console.print(f"    {label} [cyan]{m.pipeline_id}[/] ({what}): {m.note}", markup=True)

    console.print(f"[bold]Examples ({o.config.title})[/]")
    for s in o.types.values():
        if not s.missed and not s.wrong:
            continue
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(s.fp_by_kind.items()))
        console.print(
            f"  [bold]{s.fault}[/]"
            + (f" [dim](false positives by kind: {kinds})[/]" if kinds else "")
        )
        show("[red]missed[/]     ", s.missed)
        show("[yellow]false alarm[/]", s.wrong)
    if o.traps.examples:
        console.print("  [bold]traps[/]")
        show("[yellow]flagged[/]    ", o.traps.examples)


def print_report(
    console: Console,
    outcomes: Sequence[Outcome],
    checks: Sequence[Check],
    caption: str,
    examples: int,
) -> None:
    """Every table, the peer rule's verdicts on pipelines different by nature, and examples."""
    console.print(detection_table(outcomes, caption))
    console.print(
        "[dim]False positives by role: h healthy, t trap, f another fault's pipeline, e this "
        "fault's pipeline before its start. Delay: runs affected by the fault (missed, for "
        "stale) up to the detection, and hours after the start.[/]"
    )
    console.print(trap_table(outcomes))
    peers = [o for o in outcomes if o.config.enabled is None or "peer" in o.config.enabled]
    if peers:
        console.print("[bold]The peer rule on pipelines that are slow or small by nature[/]")
        for o in peers:
            console.print(f"  {_natural_line(o)}")
    if checks:
        console.print(target_table(checks))
        missed = sum(not c.passed for c in checks)
        console.print(
            f"[bold]{len(checks) - missed}/{len(checks)} targets met[/]"
            + (f", [bold red]{missed} missed[/]" if missed else "")
        )
    if examples:
        for o in outcomes:
            if o.config.name == DEFAULT:
                _examples(console, o, examples)


def _type_json(s: TypeScore) -> dict[str, Any]:
    return {
        "faulty": s.faulty,
        "detected": s.detected,
        "false_positives": s.false_positives,
        "false_positives_by_role": s.fp_by_role,
        "false_positives_by_kind": s.fp_by_kind,
        "precision": s.precision,
        "recall": s.recall,
        "f1": s.f1,
        "delay_runs_median": percentile(s.delays_runs, 50),
        "delay_runs_p90": percentile(s.delays_runs, 90),
        "delay_hours_median": percentile(s.delays_hours, 50),
        "delay_hours_p90": percentile(s.delays_hours, 90),
        "missed": [dataclasses.asdict(m) for m in s.missed],
        "false_alarms": [dataclasses.asdict(m) for m in s.wrong],
    }


def document(
    outcomes: Sequence[Outcome], checks: Sequence[Check], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON document: run metadata, each configuration's scores, and the targets."""
    return {
        **meta,
        "configs": {
            o.config.name: {
                "title": o.config.title,
                "enabled": None if o.config.enabled is None else sorted(o.config.enabled),
                "extra": o.config.extra,
                "seconds": o.seconds,
                "evaluations": o.evaluations,
                "warmup_flagged": o.warmup_flagged,
                "types": {name: _type_json(s) for name, s in o.types.items()},
                "traps": {
                    "traps": o.traps.traps,
                    "flagged": o.traps.flagged,
                    "share": o.traps.share,
                    "by_kind": {k: list(v) for k, v in o.traps.by_kind.items()},
                    "kinds_on_traps": o.traps.kinds_on_traps,
                    "healthy": o.traps.healthy,
                    "healthy_flagged": o.traps.healthy_flagged,
                    "peer_on_natural": {k: list(v) for k, v in o.traps.natural_peer.items()},
                    "examples": [dataclasses.asdict(m) for m in o.traps.examples],
                },
            }
            for o in outcomes
        },
        "targets": [dataclasses.asdict(c) for c in checks],
        "targets_met": all(c.passed for c in checks) if checks else None,
    }


def write(path: Path, doc: Mapping[str, Any]) -> None:
    """Write the document as indented JSON (NaN written as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(doc), indent=2) + "\n")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
