"""`pipewarden alerts`, `watch`, `ack` and `silence`: alerts, as they happen, and what mutes
them."""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from pipewarden.cli import output as out
from pipewarden.cli.options import add_client_options, client, whoami
from pipewarden.names import KIND_NAMES, SEVERITIES, SEVERITY_LEVELS, kind_number
from pipewarden.v1 import alert_pb2

__all__ = [
    "ack",
    "add_parsers",
    "alerts",
    "parse_span",
    "parse_time",
    "silence_create",
    "silence_delete",
    "silence_list",
    "watch",
]

_STATES = {"firing": 1, "acknowledged": 2, "resolved": 3}


def add_parsers(sub: Any) -> None:
    """Add `alerts`, `watch`, `ack` and `silence` to the subcommands."""
    alerts_cmd = add_client_options(
        sub.add_parser("alerts", help="show alerts: the open ones, most severe first")
    )
    alerts_cmd.add_argument("--team", default="", help="only this team's")
    alerts_cmd.add_argument("--min-severity", choices=SEVERITIES, default="medium")
    alerts_cmd.add_argument(
        "--state",
        choices=["open", "firing", "acknowledged", "resolved", "all"],
        default="open",
        help="which alerts (default open: firing or acknowledged)",
    )
    view = alerts_cmd.add_mutually_exclusive_group()
    view.add_argument(
        "--routed", action="store_true", help="open alerts grouped by team, then severity"
    )
    view.add_argument(
        "--history", action="store_true", help="the latest alert events, newest first"
    )
    alerts_cmd.add_argument("--limit", type=int, default=50, help="events shown with --history")
    alerts_cmd.set_defaults(run=alerts)

    watch_cmd = add_client_options(
        sub.add_parser("watch", help="print alert events as they happen (Ctrl-C to stop)")
    )
    watch_cmd.add_argument("--team", default="", help="only this team's")
    watch_cmd.add_argument("--min-severity", choices=SEVERITIES, default="medium")
    watch_cmd.add_argument("--count", type=int, default=0, help="stop after this many events")
    watch_cmd.set_defaults(run=watch)

    ack_cmd = add_client_options(
        sub.add_parser("ack", help="acknowledge an alert: you handle it, it stops escalating")
    )
    ack_cmd.add_argument("alert_id", help="the alert's id (pipewarden alerts shows it)")
    ack_cmd.add_argument("--by", default=whoami(), help="who acknowledges (default: your login)")
    ack_cmd.set_defaults(run=ack)

    silence = sub.add_parser("silence", help="mute notifications: create, list, delete")
    actions = silence.add_subparsers(dest="silence_command", metavar="ACTION", required=True)
    create = add_client_options(
        actions.add_parser("create", help="mute the matching alerts for a while")
    )
    create.add_argument("--team", default="", help="match this team's alerts")
    create.add_argument("--pipeline", default="", help="match this pipeline's alerts")
    create.add_argument("--kind", default="", help="match this kind, e.g. stale")
    length = create.add_mutually_exclusive_group(required=True)
    length.add_argument("--for", dest="duration", help="how long, e.g. 30m, 2h, 1d")
    length.add_argument("--until", help="when it ends, ISO 8601 (e.g. 2026-11-27T09:00:00Z)")
    create.add_argument("--starts", help="when it starts, ISO 8601 (default now)")
    create.add_argument("--by", default=whoami(), help="who creates it (default: your login)")
    create.add_argument("--comment", default="", help="why")
    create.set_defaults(run=silence_create)
    listing = add_client_options(actions.add_parser("list", help="silences that have not ended"))
    listing.add_argument("--team", default="", help="only those that may match this team")
    listing.set_defaults(run=silence_list)
    delete = add_client_options(actions.add_parser("delete", help="end a silence now"))
    delete.add_argument("silence_id")
    delete.add_argument("--by", default=whoami(), help="who ends it (default: your login)")
    delete.set_defaults(run=silence_delete)


# -- alerts --------------------------------------------------------------------------------------


def _state(a: alert_pb2.Alert) -> str:
    if a.state == alert_pb2.ALERT_STATE_ACKNOWLEDGED:
        return f"acked by {out.escape(a.acknowledged_by)}"
    return alert_pb2.AlertState.Name(a.state).removeprefix("ALERT_STATE_").lower()


def _notes(a: alert_pb2.Alert) -> str:
    """What else is known of an alert, as markup."""
    notes = []
    if a.caused_by:
        notes.append(f"caused by [bold]{out.escape(a.caused_by)}[/]")
    if a.untrusted_cause:
        notes.append(f"likely caused by {out.escape(a.untrusted_cause)} (untrusted lineage)")
    if a.impacted_pipelines:
        teams = out.escape(", ".join(a.impacted_teams))
        notes.append(f"root cause of {len(a.impacted_pipelines)} downstream ({teams})")
    if a.silenced:
        notes.append("[dim]silenced[/]")
    return "; ".join(notes)


def _what(a: alert_pb2.Alert) -> str:
    """The alert's message and notes, as markup."""
    notes = _notes(a)
    return out.escape(a.message) + (f" ({notes})" if notes else "")


def alerts(args: argparse.Namespace) -> int:
    """The alerts (open ones by default), routed, or the history of their events."""
    from rich import box
    from rich.table import Table

    with client(args) as pw:
        if args.history:
            return _print_history(pw.alert_history(args.team, args.limit), args)
        if args.routed:
            return _print_routed(pw.routed_alerts(args.team), args)
        state = _STATES.get(args.state, 0)
        found = pw.alerts(
            team=args.team, min_severity=SEVERITY_LEVELS[args.min_severity], state=state
        )
    if args.state == "open":
        found = [a for a in found if a.state != alert_pb2.ALERT_STATE_RESOLVED]
    if args.json:
        print(json.dumps([out.as_dict(a) for a in found]))
        return 0
    if not found:
        out.console.print("No alerts." if args.state != "open" else "No open alerts.")
        return 0
    if out.console.width < out.NARROW:
        items = []
        for a in found:
            since = out.ago(a.first_seen.ToSeconds()).removesuffix(" ago")
            what = f"{out.kind(a.kind)}, {_state(a)} {since}, {a.occurrences}x"
            text = f"{out.escape(a.alert_id)}: {_what(a)}"
            items.append((out.severity(a.severity), a.pipeline_id, a.team, what, text))
        out.print_two_lines(f"Alerts ({len(found)})", items)
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
        table.add_row(
            out.escape(a.alert_id),
            out.severity(a.severity),
            out.escape(a.pipeline_id),
            out.escape(a.team),
            out.kind(a.kind),
            _state(a),
            out.ago(a.first_seen.ToSeconds()).removesuffix(" ago"),
            f"{a.occurrences}x",
            _what(a),
        )
    out.console.print(table)
    return 0


def _print_routed(routed: alert_pb2.RoutedAlerts, args: argparse.Namespace) -> int:
    if args.json:
        print(out.as_json(routed))
        return 0
    if not routed.teams:
        out.console.print("No open alerts.")
        return 0
    for team in sorted(routed.teams):
        group = routed.teams[team]
        out.console.print(f"[bold]{out.escape(team)}[/]")
        for name, found in (("critical", group.critical), ("high", group.high),
                            ("medium", group.medium)):  # fmt: skip
            if found:
                out.console.print(f"  {out.severity(SEVERITY_LEVELS[name])} ({len(found)})")
            for a in found:
                notes = _notes(a)
                out.console.print(
                    f"    {out.escape(a.alert_id)}  {out.escape(a.pipeline_id)}  "
                    f"{out.kind(a.kind)}  {_state(a)}" + (f"  ({notes})" if notes else "")
                )
    return 0


def _event_line(e: alert_pb2.AlertEvent) -> str:
    a = e.alert
    kind = alert_pb2.AlertEventType.Name(e.type).removeprefix("ALERT_EVENT_TYPE_").lower()
    when = datetime.fromtimestamp(e.time.ToSeconds(), UTC).strftime("%Y-%m-%d %H:%M:%S")
    reason = f" ({out.escape(e.reason)})" if e.reason else ""
    muted = "" if e.notify else " [dim]not notified[/]"
    return (
        f"{when}  {kind:<12} {out.severity(a.severity)}  "
        f"{out.escape(f'{a.pipeline_id} ({a.team})')}  "
        f"{out.kind(a.kind)}  {out.escape(a.alert_id)}{reason}{muted}"
    )


def _print_history(events: list[alert_pb2.AlertEvent], args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([out.as_dict(e) for e in events]))
        return 0
    if not events:
        out.console.print("No alert events yet.")
        return 0
    for e in events:
        out.console.print(_event_line(e), highlight=False)
    return 0


def watch(args: argparse.Namespace) -> int:
    """Print alert events as they happen, until Ctrl-C or --count of them."""
    seen = 0

    def subscribed() -> None:
        out.err.print(f"watching alert events at {out.escape(args.target)} (Ctrl-C to stop)")

    with client(args) as pw:
        events = pw.watch_alerts(
            team=args.team, min_severity=SEVERITY_LEVELS[args.min_severity], subscribed=subscribed
        )
        for event in events:
            if args.json:
                print(json.dumps(out.as_dict(event)), flush=True)
            else:
                out.console.print(_event_line(event), highlight=False)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


def ack(args: argparse.Namespace) -> int:
    """Acknowledge an alert."""
    with client(args) as pw:
        a = pw.acknowledge(args.alert_id, args.by)
    if args.json:
        print(out.as_json(a))
    else:
        out.console.print(
            f"acknowledged {out.escape(a.alert_id)} ({out.escape(a.pipeline_id)}, "
            f"{out.kind(a.kind)}) as {out.escape(a.acknowledged_by)}: it no longer escalates "
            "or repeats; it resolves by itself when the pipeline recovers"
        )
    return 0


# -- silences ------------------------------------------------------------------------------------

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_span(text: str) -> float | None:
    """Seconds of a span such as `30m`, `2h`, `1.5d`; None when it is not one."""
    match = _SPAN.match(text.strip())
    if match is None:
        return None
    return float(match.group(1)) * _SPAN_SECONDS[match.group(2)]


def parse_time(text: str) -> float | None:
    """Unix seconds of an ISO 8601 time (UTC when it names no zone); None when it is not one."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def silence_create(args: argparse.Namespace) -> int:
    """Create a silence from the options."""
    kind = kind_number(args.kind) if args.kind else 0
    if kind is None:
        names = ", ".join(KIND_NAMES.values())
        out.err.print(f"[red]error:[/] --kind {out.escape(repr(args.kind))} is not one of: {names}")
        return 2
    starts = time.time()
    if args.starts:
        parsed = parse_time(args.starts)
        if parsed is None:
            given = out.escape(repr(args.starts))
            out.err.print(f"[red]error:[/] --starts {given} is not an ISO 8601 time")
            return 2
        starts = parsed
    if args.duration:
        span = parse_span(args.duration)
        if span is None:
            given = out.escape(repr(args.duration))
            out.err.print(f"[red]error:[/] --for {given} is not like 30m, 2h or 1d")
            return 2
        ends = starts + span
    else:
        until = parse_time(args.until)
        if until is None:
            given = out.escape(repr(args.until))
            out.err.print(f"[red]error:[/] --until {given} is not an ISO 8601 time")
            return 2
        ends = until
    with client(args) as pw:
        s = pw.create_silence(
            team=args.team,
            pipeline_id=args.pipeline,
            kind=kind,
            starts_at=starts if args.starts else None,
            ends_at=ends,
            created_by=args.by,
            comment=args.comment,
        )
    if args.json:
        print(out.as_json(s))
    else:
        out.console.print(
            f"created silence [bold]{out.escape(s.silence_id)}[/]: {_silence_text(s)}"
        )
    return 0


def _silence_text(s: alert_pb2.Silence) -> str:
    matchers = [
        f"team={s.team}" if s.team else "",
        f"pipeline={s.pipeline_id}" if s.pipeline_id else "",
        f"kind={out.kind(s.kind)}" if s.kind else "",
    ]
    what = " ".join(m for m in matchers if m) or "every alert"
    end = datetime.fromtimestamp(s.ends_at.ToSeconds(), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return out.escape(f"mutes {what} until {end}")


def silence_list(args: argparse.Namespace) -> int:
    """The silences that have not ended."""
    from rich import box
    from rich.table import Table

    with client(args) as pw:
        found = pw.silences(args.team)
    if args.json:
        print(json.dumps([out.as_dict(s) for s in found]))
        return 0
    if not found:
        out.console.print("No silences.")
        return 0
    table = Table(title=f"Silences ({len(found)})", box=box.SIMPLE_HEAD)
    for column in ("id", "team", "pipeline", "kind", "starts", "ends", "by", "comment"):
        table.add_column(column, overflow="fold")
    for s in found:
        table.add_row(
            out.escape(s.silence_id),
            out.escape(s.team or "*"),
            out.escape(s.pipeline_id or "*"),
            out.kind(s.kind) if s.kind else "*",
            out.when(s.starts_at),
            out.when(s.ends_at),
            out.escape(s.created_by),
            out.escape(s.comment),
        )
    out.console.print(table)
    return 0


def silence_delete(args: argparse.Namespace) -> int:
    """End a silence now."""
    with client(args) as pw:
        s = pw.delete_silence(args.silence_id, args.by)
    if args.json:
        print(out.as_json(s))
    else:
        out.console.print(f"ended silence {out.escape(s.silence_id)}; what it muted notifies again")
    return 0
