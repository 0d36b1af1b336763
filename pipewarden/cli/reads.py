"""`pipewarden health`, `teams` and `anomalies`: what the server knows of the fleet."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipewarden.cli import output as out
from pipewarden.cli.options import add_client_options, client
from pipewarden.names import SEVERITIES, SEVERITY_LEVELS
from pipewarden.v1 import health_pb2

__all__ = ["add_parsers", "anomalies", "health", "teams"]


def add_parsers(sub: Any) -> None:
    """Add `health`, `teams` and `anomalies` to the subcommands."""
    health_cmd = add_client_options(sub.add_parser("health", help="show pipeline health"))
    health_cmd.add_argument("pipeline_id", nargs="?", help="one pipeline in detail")
    health_cmd.add_argument("--team", default="", help="only this team's pipelines")
    health_cmd.set_defaults(run=health)

    teams_cmd = add_client_options(sub.add_parser("teams", help="show team metrics"))
    teams_cmd.add_argument("team", nargs="?", help="one team")
    teams_cmd.set_defaults(run=teams)

    anomalies_cmd = add_client_options(
        sub.add_parser("anomalies", help="show the current anomalies, most severe first")
    )
    anomalies_cmd.add_argument("--team", default="", help="only this team's")
    anomalies_cmd.add_argument("--pipeline", default="", help="only this pipeline's")
    anomalies_cmd.add_argument(
        "--min-severity", choices=SEVERITIES, default="medium", help="only this severe or worse"
    )
    anomalies_cmd.set_defaults(run=anomalies)


def health(args: argparse.Namespace) -> int:
    """One pipeline in detail, or the table of all (of a team)."""
    from rich import box
    from rich.table import Table

    with client(args) as pw:
        if args.pipeline_id:
            p = pw.pipeline_health(args.pipeline_id)
            if args.json:
                print(out.as_json(p))
            else:
                _print_pipeline(p)
            return 0
        pipelines = list(pw.list_pipeline_health(team=args.team))
    if args.json:
        print(json.dumps([out.as_dict(p) for p in pipelines]))
        return 0
    if not pipelines:
        of_team = f" (team {out.escape(args.team)})" if args.team else ""
        out.console.print("No pipelines yet." + of_team)
        return 0
    title = f"Pipelines of {args.team}" if args.team else "Pipelines"
    table = Table(title=out.escape(f"{title} ({len(pipelines)})"), box=box.SIMPLE_HEAD)
    table.add_column("pipeline", overflow="fold", min_width=20)
    if not args.team:
        table.add_column("team", overflow="fold", min_width=8)
    for column in ("runs", "ok", "avg time", "avg recs", "since", "streak"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("last", no_wrap=True)
    for p in pipelines:
        last = p.last_execution_time.ToSeconds() if p.HasField("last_execution_time") else None
        row = [out.escape(p.pipeline_id)] + ([] if args.team else [out.escape(p.team)])
        row += [
            f"{p.total_executions:,}",
            out.rate(p.success_rate, p.succeeded + p.failed),
            out.seconds(p.avg_duration_seconds),
            out.count(p.avg_records_processed),
            out.ago(last).removesuffix(" ago") if last is not None else "-",
            out.streak(p.consecutive_failures),
            out.status(p.last_status),
        ]
        table.add_row(*row)
    out.console.print(table)
    return 0


def _print_pipeline(p: health_pb2.PipelineHealth) -> None:
    from rich.table import Table

    table = Table(show_header=False, title=out.escape(p.pipeline_id))
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("team", out.escape(p.team)),
        (
            "executions",
            f"{p.total_executions:,} ({p.succeeded:,} succeeded, {p.failed:,} failed, "
            f"{p.cancelled:,} cancelled)",
        ),
        ("success rate", out.rate(p.success_rate, p.succeeded + p.failed)),
        (
            "recent success rate",
            f"{out.rate(p.recent_success_rate, p.recent_executions)} "
            f"over the last {p.recent_executions} runs",
        ),
        ("avg duration", out.seconds(p.avg_duration_seconds)),
        ("avg records", out.count(p.avg_records_processed)),
        (
            "last run",
            out.when(p.last_execution_time) if p.HasField("last_execution_time") else "-",
        ),
        ("last status", out.status(p.last_status)),
        ("failures in a row", out.streak(p.consecutive_failures)),
        ("in flight", str(p.in_flight)),
    ]
    if p.last_error_message:
        rows.append(("last error", out.escape(p.last_error_message)))
    for k, v in rows:
        table.add_row(k, v)
    out.console.print(table)


def teams(args: argparse.Namespace) -> int:
    """One team's metrics, or every team's."""
    from rich import box
    from rich.table import Table

    with client(args) as pw:
        found = [pw.team_metrics(args.team)] if args.team else pw.list_team_metrics()
    if args.json:
        print(json.dumps([out.as_dict(t) for t in found]))
        return 0
    if not found:
        out.console.print("No teams yet.")
        return 0
    table = Table(title=f"Teams ({len(found)})", box=box.SIMPLE_HEAD)
    for column in (
        "team",
        "pipelines",
        "runs",
        "success",
        "avg duration",
        "avg records",
        "failing now",
    ):
        table.add_column(column, justify="left" if column == "team" else "right")
    for t in found:
        table.add_row(
            out.escape(t.team),
            f"{t.pipeline_count:,}",
            f"{t.total_executions:,}",
            out.rate(t.success_rate, t.succeeded + t.failed),
            out.seconds(t.avg_duration_seconds),
            out.count(t.avg_records_processed),
            f"[red]{t.failing_pipelines}[/]" if t.failing_pipelines else "0",
        )
    out.console.print(table)
    return 0


def anomalies(args: argparse.Namespace) -> int:
    """The current anomalies, most severe first."""
    from rich import box
    from rich.table import Table

    level = SEVERITY_LEVELS[args.min_severity]
    with client(args) as pw:
        found = pw.anomalies(team=args.team, pipeline_id=args.pipeline, min_severity=level)
    if args.json:
        print(json.dumps([out.as_dict(a) for a in found]))
        return 0
    if not found:
        out.console.print("No anomalies: every pipeline looks like itself and its peers.")
        return 0
    rows = []
    for a in found:
        since = out.ago(a.detected_at.ToSeconds()).removesuffix(" ago")
        rows.append(
            (out.severity(a.severity), a.pipeline_id, a.team, out.kind(a.kind), since, a.message)
        )
    if out.console.width < out.NARROW:
        out.print_two_lines(
            f"Anomalies ({len(found)})",
            [(shown, pipeline, team, f"{kind}, {since}", out.escape(message))
             for shown, pipeline, team, kind, since, message in rows],
        )  # fmt: skip
        return 0
    table = Table(title=f"Anomalies ({len(found)})", box=box.SIMPLE_HEAD)
    table.add_column("severity", no_wrap=True)
    table.add_column("pipeline", overflow="fold", min_width=20)
    table.add_column("team", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("since", justify="right", no_wrap=True)
    table.add_column("what", overflow="fold", ratio=1, min_width=60)
    for shown, pipeline, team, kind, since, message in rows:
        table.add_row(
            shown, out.escape(pipeline), out.escape(team), kind, since, out.escape(message)
        )
    out.console.print(table)
    return 0
