"""The results: a table for people (rich) and a JSON document for tools."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.common import Figure, SectionResult

__all__ = ["document", "format_value", "table", "write"]


def format_value(value: float, unit: str) -> str:
    """A figure's value with its unit, rounded for reading."""
    if math.isnan(value):
        return "n/a"
    if unit == "events/s":
        return f"{value:,.0f} events/s"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "ratio":
        return f"{value:.2f}"
    return f"{value:,.2f} {unit}"


def _verdict(fig: Figure) -> str:
    if fig.passed is None:
        return ""
    return "[bold green]PASS[/]" if fig.passed else "[bold red]MISS[/]"


def table(results: Sequence[SectionResult], caption: str = "") -> Table:
    """Every figure of every section, with its target and PASS/MISS."""
    out = Table(title="Pipewarden benchmarks", caption=caption, show_lines=False)
    out.add_column("Figure")
    out.add_column("Value", justify="right")
    out.add_column("Target", justify="right")
    out.add_column("Result", justify="center")
    out.add_column("Notes", style="dim")
    for i, res in enumerate(results):
        if i:
            out.add_section()
        heading = f"[bold]{res.title}[/] [dim]({res.name}, {res.seconds:.0f}s)[/]"
        out.add_row(heading, "", "", "", "")
        if res.error is not None:
            out.add_row("  [red]failed[/]", "", "", "[bold red]ERROR[/]", res.error)
        for fig in res.figures:
            out.add_row(
                f"  {fig.name}",
                format_value(fig.value, fig.unit),
                "" if fig.target is None else str(fig.target),
                _verdict(fig),
                fig.note,
            )
    return out


def document(results: Sequence[SectionResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: run metadata, every figure flat, and each section's details."""
    return {
        **meta,
        "figures": [fig.to_json() for res in results for fig in res.figures],
        "sections": {
            res.name: {
                "title": res.title,
                "seconds": res.seconds,
                "error": res.error,
                "figures": [fig.to_json() for fig in res.figures],
                "details": res.details,
            }
            for res in results
        },
    }


def write(path: Path, doc: dict[str, Any]) -> None:
    """Write the document as indented JSON (NaN written as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(doc), indent=2, sort_keys=False) + "\n")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
