"""The `pipewarden` command: run the server, send events, and read what it knows.

Client commands talk to a running server (--target, default 127.0.0.1:50051) and print tables,
or JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from pipewarden.reporter import retry_hint
from pipewarden.v1 import alert_pb2, anomaly_pb2, execution_pb2, health_pb2, service_pb2

if TYPE_CHECKING:
    from rich.console import Console

    from pipewarden.client import Client

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
        help="cut a log damaged where a crash cannot have left it (not a torn tail) at the "
        "damage, losing what follows, instead of refusing to start",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address with no auth.tokens configured (anyone who can "
        "reach it can read and write every team's data)",
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
        return _client_options(sub.add_parser(name, help=help))

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

    alerts = client("alerts", "show alerts: the open ones, most severe first")
    alerts.add_argument("--team", default="", help="only this team's")
    alerts.add_argument("--min-severity", choices=_SEVERITIES, default="medium")
    alerts.add_argument(
        "--state",
        choices=["open", "firing", "acknowledged", "resolved", "all"],
        default="open",
        help="which alerts (default open: firing or acknowledged)",
    )
    view = alerts.add_mutually_exclusive_group()
    view.add_argument(
        "--routed", action="store_true", help="open alerts grouped by team, then severity"
    )
    view.add_argument(
        "--history", action="store_true", help="the latest alert events, newest first"
    )
    alerts.add_argument("--limit", type=int, default=50, help="events shown with --history")
    alerts.set_defaults(run=_alerts)

    watch = client("watch", "print alert events as they happen (Ctrl-C to stop)")
    watch.add_argument("--team", default="", help="only this team's")
    watch.add_argument("--min-severity", choices=_SEVERITIES, default="medium")
    watch.add_argument("--count", type=int, default=0, help="stop after this many events")
    watch.set_defaults(run=_watch)

    ack = client("ack", "acknowledge an alert: you handle it, it stops escalating")
    ack.add_argument("alert_id", help="the alert's id (pipewarden alerts shows it)")
    ack.add_argument("--by", default=_whoami(), help="who acknowledges (default: your login)")
    ack.set_defaults(run=_ack)

    silence = sub.add_parser("silence", help="mute notifications: create, list, delete")
    silence_sub = silence.add_subparsers(dest="silence_command", metavar="ACTION", required=True)
    create = _client_options(
        silence_sub.add_parser("create", help="mute the matching alerts for a while")
    )
    create.add_argument("--team", default="", help="match this team's alerts")
    create.add_argument("--pipeline", default="", help="match this pipeline's alerts")
    create.add_argument("--kind", default="", help="match this kind, e.g. stale")
    length = create.add_mutually_exclusive_group(required=True)
    length.add_argument("--for", dest="duration", help="how long, e.g. 30m, 2h, 1d")
    length.add_argument("--until", help="when it ends, ISO 8601 (e.g. 2026-11-27T09:00:00Z)")
    create.add_argument("--starts", help="when it starts, ISO 8601 (default now)")
    create.add_argument("--by", default=_whoami(), help="who creates it (default: your login)")
    create.add_argument("--comment", default="", help="why")
    create.set_defaults(run=_silence_create)
    listing = _client_options(silence_sub.add_parser("list", help="silences that have not ended"))
    listing.add_argument("--team", default="", help="only those that may match this team")
    listing.set_defaults(run=_silence_list)
    delete = _client_options(silence_sub.add_parser("delete", help="end a silence now"))
    delete.add_argument("silence_id")
    delete.add_argument("--by", default=_whoami(), help="who ends it (default: your login)")
    delete.set_defaults(run=_silence_delete)

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


def _client_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
    p.add_argument(
        "--tls-ca",
        default=os.environ.get("PIPEWARDEN_TLS_CA"),
        help="connect with TLS, trusting this CA's PEM file (env PIPEWARDEN_TLS_CA)",
    )
    p.add_argument(
        "--tls-cert",
        default=os.environ.get("PIPEWARDEN_TLS_CERT"),
        help="client certificate PEM file, for mutual TLS (env PIPEWARDEN_TLS_CERT)",
    )
    p.add_argument(
        "--tls-key",
        default=os.environ.get("PIPEWARDEN_TLS_KEY"),
        help="the client certificate's key PEM file (env PIPEWARDEN_TLS_KEY)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    from pipewarden.client import tls_credentials

    return tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)


def _client(args: argparse.Namespace) -> Client:
    # Imported here: `serve` never needs the client, and every start would pay for it.
    from pipewarden.client import Client

    return Client(args.target, token=args.token, credentials=_credentials(args))


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


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
    from pipewarden.server import app
    from pipewarden.server.base.errors import ConfigError
    from pipewarden.server.config import load

    try:
        config = load(args.config).with_overrides(
            listen=args.listen, http_listen=args.http_listen, data_dir=args.data_dir
        )
    except ConfigError as e:
        err.print(f"[red]error:[/] {e}")
        return 2
    return app.run(config, repair=args.repair, insecure=args.insecure)


# -- dead-letters --------------------------------------------------------------------------------


def _dead_letters(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from pipewarden.notifiers.deadletters import read

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

SEND_RETRIES = 20
"""How many times `send` waits and sends again when the server says it is busy."""


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
    offset = done = tries = 0
    with _client(args) as client:
        while done < len(batches):
            try:
                for response in client.stream_ingest(batches[done:]):
                    totals["accepted"] += response.accepted
                    totals["duplicates"] += response.duplicates
                    totals["running"] += response.running
                    for r in response.rejected:
                        bad.append((lines[offset + r.index], r.execution_id, r.reason))
                    offset += len(batches[done].executions)
                    done += 1
            except grpc.RpcError as e:
                # A busy server (a cap on streams, the ingest queue, a rate limit) says when to
                # send again; what it had not answered is sent again then (resent executions
                # it had already counted are answered as duplicates).
                hint = retry_hint(e.trailing_metadata()) if isinstance(e, grpc.Call) else None
                if hint is None or tries >= SEND_RETRIES:
                    raise
                tries += 1
                err.print(f"[yellow]the server is busy ({e.details()}); sending again[/]")
                time.sleep(hint)
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

    with _client(args) as client:
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

    with _client(args) as client:
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


NARROW = 140
"""Terminals narrower than this get anomalies and alerts on two lines each: in a table, the
message column would be squeezed to nothing."""


def _print_two_lines(title: str, items: Sequence[tuple[str, str, str, str, str]]) -> None:
    """(severity markup, pipeline, team, what, message) as a heading line and the message
    indented under it."""
    from rich.markup import escape

    console.print(f"[bold]{title}[/]\n")
    for shown, pipeline, team, what, message in items:
        console.print(f"{shown}  [bold]{escape(pipeline)}[/] ({escape(team)})  {what}")
        console.print(f"    {escape(message)}\n", highlight=False)


def _anomalies(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    level = {"medium": 1, "high": 2, "critical": 3}[args.min_severity]
    with _client(args) as client:
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
    if console.width < NARROW:
        _print_two_lines(
            f"Anomalies ({len(found)})",
            [(shown, pipeline, team, f"{kind}, {since}", message)
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
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return 0


# -- alerts --------------------------------------------------------------------------------------

_SEVERITIES = ["medium", "high", "critical"]
_LEVEL = {"medium": 1, "high": 2, "critical": 3}
_STATES = {"firing": 1, "acknowledged": 2, "resolved": 3}


def _severity(n: int) -> str:
    name = anomaly_pb2.Severity.Name(n).removeprefix("SEVERITY_").lower()  # type: ignore[arg-type]
    style = _SEVERITY_STYLE.get(n, "")
    return f"[{style}]{name}[/]" if style else name


def _kind(n: int) -> str:
    name = anomaly_pb2.AnomalyKind.Name(n)  # type: ignore[arg-type]
    return name.removeprefix("ANOMALY_KIND_").lower().replace("_", " ")


def _state(a: alert_pb2.Alert) -> str:
    name = alert_pb2.AlertState.Name(a.state).removeprefix("ALERT_STATE_").lower()
    if a.state == alert_pb2.ALERT_STATE_ACKNOWLEDGED:
        return f"acked by {a.acknowledged_by}"
    return name


def _alert_notes(a: alert_pb2.Alert) -> str:
    notes = []
    if a.caused_by:
        notes.append(f"caused by [bold]{a.caused_by}[/]")
    if a.untrusted_cause:
        notes.append(f"likely caused by {a.untrusted_cause} (untrusted lineage)")
    if a.impacted_pipelines:
        teams = ", ".join(a.impacted_teams)
        notes.append(f"root cause of {len(a.impacted_pipelines)} downstream ({teams})")
    if a.silenced:
        notes.append("[dim]silenced[/]")
    return "; ".join(notes)


def _alerts(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    with _client(args) as client:
        if args.history:
            return _print_history(client.alert_history(args.team, args.limit), args)
        if args.routed:
            return _print_routed(client.routed_alerts(args.team), args)
        state = _STATES.get(args.state, 0)
        found = client.alerts(team=args.team, min_severity=_LEVEL[args.min_severity], state=state)
    if args.state == "open":
        found = [a for a in found if a.state != alert_pb2.ALERT_STATE_RESOLVED]
    if args.json:
        print(json.dumps([_dict(a) for a in found]))
        return 0
    if not found:
        console.print("No alerts." if args.state != "open" else "No open alerts.")
        return 0
    if console.width < NARROW:
        items = []
        for a in found:
            notes = _alert_notes(a)
            since = _ago(a.first_seen.ToSeconds()).removesuffix(" ago")
            what = f"{_kind(a.kind)}, {_state(a)} {since}, {a.occurrences}x"
            text = f"{a.alert_id}: {a.message}" + (f" ({notes})" if notes else "")
            items.append((_severity(a.severity), a.pipeline_id, a.team, what, text))
        _print_two_lines(f"Alerts ({len(found)})", items)
        return 0
    table = Table(title=f"Alerts ({len(found)})", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("pipeline", overflow="fold", min_width=16)
    table.add_column("team", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("since", justify="right", no_wrap=True)
    table.add_column("seen", justify="right", no_wrap=True)
    table.add_column("what", overflow="fold", ratio=1)
    for a in found:
        notes = _alert_notes(a)
        table.add_row(
            a.alert_id,
            _severity(a.severity),
            a.pipeline_id,
            a.team,
            _kind(a.kind),
            _state(a),
            _ago(a.first_seen.ToSeconds()).removesuffix(" ago"),
            f"{a.occurrences}x",
            a.message + (f" ({notes})" if notes else ""),
        )
    console.print(table)
    return 0


def _print_routed(routed: alert_pb2.RoutedAlerts, args: argparse.Namespace) -> int:
    if args.json:
        print(_json(routed))
        return 0
    if not routed.teams:
        console.print("No open alerts.")
        return 0
    for team in sorted(routed.teams):
        group = routed.teams[team]
        console.print(f"[bold]{team}[/]")
        for name, alerts in (("critical", group.critical), ("high", group.high),
                             ("medium", group.medium)):  # fmt: skip
            if alerts:
                console.print(f"  {_severity(_LEVEL[name])} ({len(alerts)})")
            for a in alerts:
                notes = _alert_notes(a)
                console.print(
                    f"    {a.alert_id}  {a.pipeline_id}  {_kind(a.kind)}  {_state(a)}"
                    + (f"  ({notes})" if notes else "")
                )
    return 0


def _event_line(e: alert_pb2.AlertEvent) -> str:
    a = e.alert
    kind = alert_pb2.AlertEventType.Name(e.type).removeprefix("ALERT_EVENT_TYPE_").lower()
    when = datetime.fromtimestamp(e.time.ToSeconds(), UTC).strftime("%Y-%m-%d %H:%M:%S")
    reason = f" ({e.reason})" if e.reason else ""
    muted = "" if e.notify else " [dim]not notified[/]"
    return (
        f"{when}  {kind:<12} {_severity(a.severity)}  {a.pipeline_id} ({a.team})  "
        f"{_kind(a.kind)}  {a.alert_id}{reason}{muted}"
    )


def _print_history(events: list[alert_pb2.AlertEvent], args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([_dict(e) for e in events]))
        return 0
    if not events:
        console.print("No alert events yet.")
        return 0
    for e in events:
        console.print(_event_line(e), highlight=False)
    return 0


def _watch(args: argparse.Namespace) -> int:
    seen = 0

    def subscribed() -> None:
        err.print(f"watching alert events at {args.target} (Ctrl-C to stop)")

    with _client(args) as client:
        events = client.watch_alerts(
            team=args.team, min_severity=_LEVEL[args.min_severity], subscribed=subscribed
        )
        for event in events:
            if args.json:
                print(json.dumps(_dict(event)), flush=True)
            else:
                console.print(_event_line(event), highlight=False)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


def _ack(args: argparse.Namespace) -> int:
    with _client(args) as client:
        a = client.acknowledge(args.alert_id, args.by)
    if args.json:
        print(_json(a))
    else:
        console.print(
            f"acknowledged {a.alert_id} ({a.pipeline_id}, {_kind(a.kind)}) as {a.acknowledged_by}: "
            "it no longer escalates or repeats; it resolves by itself when the pipeline recovers"
        )
    return 0


_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_span(text: str) -> float | None:
    match = _SPAN.match(text.strip())
    if match is None:
        return None
    return float(match.group(1)) * _SPAN_SECONDS[match.group(2)]


def _parse_time(text: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _kind_number(text: str) -> int | None:
    if not text:
        return 0
    name = "ANOMALY_KIND_" + text.strip().upper().replace(" ", "_").replace("-", "_")
    try:
        return int(anomaly_pb2.AnomalyKind.Value(name))
    except ValueError:
        return None


def _silence_create(args: argparse.Namespace) -> int:
    kind = _kind_number(args.kind)
    if kind is None:
        names = ", ".join(
            n.removeprefix("ANOMALY_KIND_").lower() for n in anomaly_pb2.AnomalyKind.keys()[1:]
        )
        err.print(f"[red]error:[/] --kind {args.kind!r} is not one of: {names}")
        return 2
    starts = time.time()
    if args.starts:
        parsed = _parse_time(args.starts)
        if parsed is None:
            err.print(f"[red]error:[/] --starts {args.starts!r} is not an ISO 8601 time")
            return 2
        starts = parsed
    if args.duration:
        span = _parse_span(args.duration)
        if span is None:
            err.print(f"[red]error:[/] --for {args.duration!r} is not like 30m, 2h or 1d")
            return 2
        ends = starts + span
    else:
        until = _parse_time(args.until)
        if until is None:
            err.print(f"[red]error:[/] --until {args.until!r} is not an ISO 8601 time")
            return 2
        ends = until
    with _client(args) as client:
        s = client.create_silence(
            team=args.team,
            pipeline_id=args.pipeline,
            kind=kind,
            starts_at=starts if args.starts else None,
            ends_at=ends,
            created_by=args.by,
            comment=args.comment,
        )
    if args.json:
        print(_json(s))
    else:
        console.print(f"created silence [bold]{s.silence_id}[/]: {_silence_text(s)}")
    return 0


def _silence_text(s: alert_pb2.Silence) -> str:
    matchers = [
        f"team={s.team}" if s.team else "",
        f"pipeline={s.pipeline_id}" if s.pipeline_id else "",
        f"kind={_kind(s.kind)}" if s.kind else "",
    ]
    what = " ".join(m for m in matchers if m) or "every alert"
    end = datetime.fromtimestamp(s.ends_at.ToSeconds(), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"mutes {what} until {end}"


def _silence_list(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    with _client(args) as client:
        found = client.silences(args.team)
    if args.json:
        print(json.dumps([_dict(s) for s in found]))
        return 0
    if not found:
        console.print("No silences.")
        return 0
    table = Table(title=f"Silences ({len(found)})", box=box.SIMPLE_HEAD)
    for column in ("id", "team", "pipeline", "kind", "starts", "ends", "by", "comment"):
        table.add_column(column, overflow="fold")
    for s in found:
        table.add_row(
            s.silence_id,
            s.team or "*",
            s.pipeline_id or "*",
            _kind(s.kind) if s.kind else "*",
            _when(s.starts_at),
            _when(s.ends_at),
            s.created_by,
            s.comment,
        )
    console.print(table)
    return 0


def _silence_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        s = client.delete_silence(args.silence_id, args.by)
    if args.json:
        print(_json(s))
    else:
        console.print(f"ended silence {s.silence_id}; what it muted notifies again")
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
            credentials=_credentials(args),
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
        return "in " + _seconds(max(-delta, 0.1))
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
