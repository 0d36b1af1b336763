"""`pipewarden dead-letters`: the notifications given up on, read from the data directory."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from pipewarden.cli.output import console, escape, severity
from pipewarden.names import SEVERITY_LEVELS

__all__ = ["add_parser", "dead_letters"]


def add_parser(sub: Any) -> None:
    """Add `dead-letters` to the subcommands."""
    dead: argparse.ArgumentParser = sub.add_parser(
        "dead-letters",
        help="show the notifications given up on (read from the data directory; no server needed)",
    )
    dead.add_argument("--data-dir", default="./var", help="the server's data directory")
    dead.add_argument("--receiver", default="", help="only this receiver's")
    dead.add_argument("--limit", type=int, default=50, help="the newest N (0: all)")
    dead.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dead.set_defaults(run=dead_letters)


def dead_letters(args: argparse.Namespace) -> int:
    """Print the dead letters, newest last; the exit status."""
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
            f"No dead letters in {escape(where)}: every notification was delivered or is pending."
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
        name = str(x.get("severity", ""))
        level = SEVERITY_LEVELS.get(name)
        table.add_row(
            str(x.get("time", "")).replace("T", " ")[:19],
            escape(f"{x.get('receiver', '')} ({x.get('receiver_type', '')})"),
            severity(level) if level is not None else escape(name),
            escape(str(x.get("event", ""))),
            escape(str(x.get("pipeline_id", ""))),
            escape(str(x.get("team", ""))),
            str(x.get("attempts", "")),
            escape(str(x.get("error", ""))),
        )
    console.print(table)
    return 0
