"""The `pipewarden` command: run the server, send events, and read what it knows.

Client commands talk to a running server (--target, default 127.0.0.1:50051) and print tables,
or JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from pipewarden.client import Client
from pipewarden.v1 import anomaly_pb2, execution_pb2, health_pb2, service_pb2

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["main"]


class _LazyConsole:
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


console = _LazyConsole()
err = _LazyConsole(stderr=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return command(args)
    except grpc.RpcError as e:
        return _rpc_error(e, args)
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipewarden", description="Monitoring for data pipelines."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", help="YAML configuration file")
    serve.add_argument("--listen", help="gRPC address HOST:PORT (default 127.0.0.1:50051)")
    serve.add_argument("--http-listen", help="HTTP address HOST:PORT (default 127.0.0.1:9095)")
    serve.add_argument("--data-dir", help="where the log and snapshots live (default ./var)")
    serve.add_argument(
        "--repair",
        action="store_true",
        help="cut a log that is corrupt before its newest segment at the corruption, "
        "losing what follows, instead of refusing to start",
    )
    serve.set_defaults(run=_serve)

    dead = sub.add_parser(
        "dead-letters",
        help="show the notifications given up on (read from the data directory; no server needed)",
    )
    dead.add_argument("--data-dir", default="./var", help="the server's data directory")
    dead.add_argument("--receiver", default="", help="only this receiver's")
    dead.add_argument("--limit", type=int, default=50, help="the newest N (0: all)")
    dead.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dead.set_defaults(run=_dead_letters)

    def client(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument(
            "--target",
            default=os.environ.get("PIPEWARDEN_TARGET", "127.0.0.1:50051"),
            help="server address (env PIPEWARDEN_TARGET; default 127.0.0.1:50051)",
        )
        p.add_argument(
            "--token",
            default=os.environ.get("PIPEWARDEN_TOKEN"),
            help="bearer token (env PIPEWARDEN_TOKEN)",
        )
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return p

    send = client("send", "send executions from a JSON Lines file (- for standard input)")
    send.add_argument("file", help="one PipelineExecution as JSON per line")
    send.add_argument("--batch", type=int, default=500, help="executions per request")
    send.set_defaults(run=_send)

    health = client("health", "show pipeline health")
    health.add_argument("pipeline_id", nargs="?", help="one pipeline in detail")
    health.add_argument("--team", default="", help="only this team's pipelines")
    health.set_defaults(run=_health)

    teams = client("teams", "show team metrics")
    teams.add_argument("team", nargs="?", help="one team")
    teams.set_defaults(run=_teams)

    anomalies = client("anomalies", "show the current anomalies, most severe first")
    anomalies.add_argument("--team", default="", help="only this team's")
    anomalies.add_argument("--pipeline", default="", help="only this pipeline's")
    anomalies.add_argument(
        "--min-severity",
        choices=["medium", "high", "critical"],
        default="medium",
        help="only this severe or worse",
    )
    anomalies.set_defaults(run=_anomalies)

    sim = client("simulate", "stream a simulated fleet of pipelines to the server")
    sim.add_argument("--teams", type=int, default=8)
    sim.add_argument("--pipelines", type=int, default=200)
    sim.add_argument("--days", type=float, default=3.0, help="days of history to simulate")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument(
        "--faults",
        type=float,
        default=0.05,
        help="fraction of pipelines with an injected fault (0 to 1)",
    )
    sim.add_argument("--batch", type=int, default=500, help="executions per request")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar")
    sim.set_defaults(run=_simulate)
    return parser


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {args.token}"),) if args.token else ()


def _rpc_error(e: grpc.RpcError, args: argparse.Namespace) -> int:
    code = e.code() if isinstance(e, grpc.Call) else None
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    if code == grpc.StatusCode.UNAVAILABLE:
        target = getattr(args, "target", "")
        err.print(
            f"[red]error:[/] cannot reach Pipewarden at {target} ({details}). "
            "Is it running? Start it with `pipewarden serve` or `make run`."
        )
    else:
        name = code.name if code is not None else "error"
        err.print(f"[red]error:[/] {name}: {details}")
    return 1


# -- serve ---------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from server import app
    from server.config import load
    from server.errors import ConfigError

    try:
        config = load(args.config).with_overrides(
            listen=args.listen, http_listen=args.http_listen, data_dir=args.data_dir
        )
    except ConfigError as e:
        err.print(f"[red]error:[/] {e}")
        return 2
    return app.run(config, repair=args.repair)


# -- dead-letters --------------------------------------------------------------------------------


def _dead_letters(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from notifiers.deadletters import read

    letters = [
        x for x in read(args.data_dir) if not args.receiver or x.get("receiver") == args.receiver
    ]
    total = len(letters)
    if args.limit > 0:
        letters = letters[-args.limit :]
    if args.json:
        print(json.dumps(letters))
        return 0
    if not letters:
        where = os.path.join(args.data_dir, "outbox")
        console.print(
            f"No dead letters in {where}: every notification was delivered or is pending."
        )
        return 0
    shown = f", the newest {len(letters)}" if len(letters) < total else ""
    table = Table(title=f"Dead letters ({total}{shown})", box=box.SIMPLE_HEAD)
    table.add_column("when (UTC)", no_wrap=True)
    table.add_column("receiver", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("pipeline", overflow="fold", min_width=16)
    table.add_column("team", overflow="fold")
    table.add_column("tries", justify="right")
    table.add_column("why", overflow="fold", ratio=1)
    for x in letters:
        level = {"critical": 3, "high": 2, "medium": 1}.get(str(x.get("severity")), 0)
        style = _SEVERITY_STYLE.get(level, "")
        severity = str(x.get("severity", ""))
        table.add_row(
            str(x.get("time", "")).replace("T", " ")[:19],
            f"{x.get('receiver', '')} ({x.get('receiver_type', '')})",
            f"[{style}]{severity}[/]" if style else severity,
            str(x.get("event", "")),
            str(x.get("pipeline_id", "")),
            str(x.get("team", "")),
            str(x.get("attempts", "")),
            str(x.get("error", "")),
        )
    console.print(table)
    return 0


# -- send ----------------------------------------------------------------------------------------


def _send(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from rich.table import Table

    if args.batch < 1:
        err.print("[red]error:[/] --batch must be at least 1")
        return 2
    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    bad: list[tuple[int, str, str]] = []
    lines: list[int] = []
    batches: list[service_pb2.IngestRequest] = []
    batch = service_pb2.IngestRequest()
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                msg = json_format.Parse(line, execution_pb2.PipelineExecution())
            except json_format.ParseError as e:
                bad.append((number, _guess_id(line), f"not a PipelineExecution: {e}"))
                continue
            batch.executions.append(msg)
            lines.append(number)
            if len(batch.executions) >= args.batch:
                batches.append(batch)
                batch = service_pb2.IngestRequest()
    if batch.executions:
        batches.append(batch)
    totals = {"accepted": 0, "duplicates": 0, "running": 0}
    offset = 0
    with Client(args.target, token=args.token) as client:
        for request, response in zip(batches, client.stream_ingest(batches), strict=True):
            totals["accepted"] += response.accepted
            totals["duplicates"] += response.duplicates
            totals["running"] += response.running
            for r in response.rejected:
                bad.append((lines[offset + r.index], r.execution_id, r.reason))
            offset += len(request.executions)
    bad.sort()
    if args.json:
        print(
            json.dumps(
                {
                    **totals,
                    "rejected": [{"line": n, "execution_id": i, "reason": r} for n, i, r in bad],
                }
            )
        )
    else:
        console.print(
            f"accepted [green]{totals['accepted']}[/], duplicates {totals['duplicates']}, "
            f"running {totals['running']}, rejected [red]{len(bad)}[/]"
        )
        if bad:
            table = Table("line", "execution_id", "reason", title="Rejected")
            for n, eid, reason in bad:
                table.add_row(str(n), eid, reason)
            console.print(table)
    return 1 if bad else 0


def _guess_id(line: str) -> str:
    try:
        value = json.loads(line)
    except ValueError:
        return ""
    found = (
        value.get("executionId", value.get("execution_id", "")) if isinstance(value, dict) else ""
    )
    return found if isinstance(found, str) else ""


# -- health and teams ----------------------------------------------------------------------------


def _health(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    with Client(args.target, token=args.token) as client:
        if args.pipeline_id:
            p = client.pipeline_health(args.pipeline_id)
            if args.json:
                print(_json(p))
            else:
                _print_pipeline(p)
            return 0
        pipelines = list(client.list_pipeline_health(team=args.team))
    if args.json:
        print(json.dumps([_dict(p) for p in pipelines]))
        return 0
    if not pipelines:
        console.print("No pipelines yet." + (f" (team {args.team})" if args.team else ""))
        return 0
    title = f"Pipelines of {args.team}" if args.team else "Pipelines"
    table = Table(title=f"{title} ({len(pipelines)})", box=box.SIMPLE_HEAD)
    table.add_column("pipeline", overflow="fold", min_width=20)
    if not args.team:
        table.add_column("team", overflow="fold", min_width=8)
    for column in ("runs", "ok", "avg time", "avg recs", "since", "streak"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("last", no_wrap=True)
    for p in pipelines:
        last = p.last_execution_time.ToSeconds() if p.HasField("last_execution_time") else None
        row = [p.pipeline_id] + ([] if args.team else [p.team])
        row += [
            f"{p.total_executions:,}",
            _rate(p.success_rate, p.succeeded + p.failed),
            _seconds(p.avg_duration_seconds),
            _count(p.avg_records_processed),
            _ago(last).removesuffix(" ago") if last is not None else "-",
            _streak(p.consecutive_failures),
            _status(p.last_status),
        ]
        table.add_row(*row)
    console.print(table)
    return 0


def _print_pipeline(p: health_pb2.PipelineHealth) -> None:
    from rich.table import Table

    table = Table(show_header=False, title=p.pipeline_id)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("team", p.team),
        (
            "executions",
            f"{p.total_executions:,} ({p.succeeded:,} succeeded, {p.failed:,} failed, "
            f"{p.cancelled:,} cancelled)",
        ),
        ("success rate", _rate(p.success_rate, p.succeeded + p.failed)),
        (
            "recent success rate",
            f"{_rate(p.recent_success_rate, p.recent_executions)} "
            f"over the last {p.recent_executions} runs",
        ),
        ("avg duration", _seconds(p.avg_duration_seconds)),
        ("avg records", _count(p.avg_records_processed)),
        ("last run", _when(p.last_execution_time) if p.HasField("last_execution_time") else "-"),
        ("last status", _status(p.last_status)),
        ("failures in a row", _streak(p.consecutive_failures)),
        ("in flight", str(p.in_flight)),
    ]
    if p.last_error_message:
        rows.append(("last error", p.last_error_message))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def _teams(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    with Client(args.target, token=args.token) as client:
        teams = [client.team_metrics(args.team)] if args.team else client.list_team_metrics()
    if args.json:
        print(json.dumps([_dict(t) for t in teams]))
        return 0
    if not teams:
        console.print("No teams yet.")
        return 0
    table = Table(title=f"Teams ({len(teams)})", box=box.SIMPLE_HEAD)
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
    for t in teams:
        table.add_row(
            t.team,
            f"{t.pipeline_count:,}",
            f"{t.total_executions:,}",
            _rate(t.success_rate, t.succeeded + t.failed),
            _seconds(t.avg_duration_seconds),
            _count(t.avg_records_processed),
            f"[red]{t.failing_pipelines}[/]" if t.failing_pipelines else "0",
        )
    console.print(table)
    return 0


# -- anomalies -----------------------------------------------------------------------------------

_SEVERITY_STYLE = {3: "bold red", 2: "red", 1: "yellow"}


def _anomalies(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    level = {"medium": 1, "high": 2, "critical": 3}[args.min_severity]
    with Client(args.target, token=args.token) as client:
        found = client.anomalies(team=args.team, pipeline_id=args.pipeline, min_severity=level)
    if args.json:
        print(json.dumps([_dict(a) for a in found]))
        return 0
    if not found:
        console.print("No anomalies: every pipeline looks like itself and its peers.")
        return 0
    rows = []
    for a in found:
        severity = anomaly_pb2.Severity.Name(a.severity).removeprefix("SEVERITY_").lower()
        kind = anomaly_pb2.AnomalyKind.Name(a.kind).removeprefix("ANOMALY_KIND_").lower()
        style = _SEVERITY_STYLE.get(a.severity, "")
        since = _ago(a.detected_at.ToSeconds()).removesuffix(" ago")
        shown = f"[{style}]{severity}[/]" if style else severity
        rows.append((shown, a.pipeline_id, a.team, kind.replace("_", " "), since, a.message))
    if console.width < 140:
        # Too narrow for the message beside the rest: each anomaly on two lines.
        from rich.markup import escape

        console.print(f"[bold]Anomalies ({len(found)})[/]\n")
        for shown, pipeline, team, kind, since, message in rows:
            console.print(f"{shown}  [bold]{escape(pipeline)}[/] ({escape(team)})  {kind}, {since}")
            console.print(f"    {escape(message)}\n", highlight=False)
        return 0
    table = Table(title=f"Anomalies ({len(found)})", box=box.SIMPLE_HEAD)
    table.add_column("severity", no_wrap=True)
    table.add_column("pipeline", overflow="fold", min_width=20)
    table.add_column("team", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("since", justify="right", no_wrap=True)
    table.add_column("what", overflow="fold", ratio=1, min_width=60)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return 0


# -- simulate ------------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    from pipewarden import simulate

    spec = simulate.FleetSpec(
        teams=args.teams,
        pipelines=args.pipelines,
        days=args.days,
        seed=args.seed,
        faults=args.faults,
    )
    began = time.perf_counter()
    result = asyncio.run(
        simulate.run(
            args.target,
            spec,
            batch_size=args.batch,
            progress=not args.no_progress,
            metadata=_metadata(args),
        )
    )
    if args.json:
        print(
            json.dumps(
                {
                    "sent": result.sent,
                    "accepted": result.accepted,
                    "duplicates": result.duplicates,
                    "running": result.running,
                    "rejected": result.rejected,
                    "seconds": result.seconds,
                }
            )
        )
        return 0
    elapsed = time.perf_counter() - began
    console.print(
        f"sent {result.sent:,} events for {spec.pipelines} pipelines of {spec.teams} teams in "
        f"{elapsed:.1f}s: accepted {result.accepted:,}, running {result.running:,}, "
        f"duplicates {result.duplicates:,}, rejected {result.rejected:,}"
    )
    console.print("Now try: [bold]pipewarden health[/] and [bold]pipewarden teams[/]")
    return 0


# -- formatting ----------------------------------------------------------------------------------


def _json(msg: Any) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(msg, indent=2)


def _dict(msg: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    result: dict[str, Any] = json_format.MessageToDict(
        msg, always_print_fields_with_no_presence=True
    )
    return result


def _rate(rate: float, judged: int) -> str:
    if not judged:
        return "-"
    text = f"{rate * 100:.1f}%"
    if rate < 0.9:
        return f"[red]{text}[/]"
    if rate < 0.98:
        return f"[yellow]{text}[/]"
    return text


def _seconds(s: float) -> str:
    if s <= 0:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def _count(n: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= limit:
            return f"{n / limit:.1f}{suffix}"
    return f"{n:.0f}"


def _ago(t: float) -> str:
    delta = time.time() - t
    if delta < 0:
        return "in the future"
    return _seconds(max(delta, 0.1)) + " ago"


def _when(ts: Any) -> str:
    t = ts.ToSeconds()
    return f"{datetime.fromtimestamp(t, UTC):%Y-%m-%d %H:%M:%S} UTC ({_ago(t)})"


def _streak(n: int) -> str:
    if n >= 3:
        return f"[red]{n}[/]"
    return str(n)


def _status(status: int) -> str:
    full = execution_pb2.ExecutionStatus.Name(status)  # type: ignore[arg-type]
    name = full.removeprefix("EXECUTION_STATUS_").lower()
    colour = {"failed": "red", "succeeded": "green", "unspecified": "dim"}.get(name)
    name = "-" if name == "unspecified" else name
    return f"[{colour}]{name}[/]" if colour else name


if __name__ == "__main__":
    sys.exit(main())
