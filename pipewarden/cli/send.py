"""`pipewarden send`: executions from a JSON Lines file, streamed to the server."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import grpc

from pipewarden.cli.options import add_client_options, client
from pipewarden.cli.output import console, err, escape
from pipewarden.reporter import retry_hint
from pipewarden.v1 import execution_pb2, service_pb2

__all__ = ["SEND_RETRIES", "add_parser", "send"]

SEND_RETRIES = 20
"""How many times `send` waits and sends again when the server says it is busy."""


def add_parser(sub: Any) -> None:
    """Add `send` to the subcommands."""
    p = add_client_options(
        sub.add_parser("send", help="send executions from a JSON Lines file (- for standard input)")
    )
    p.add_argument("file", help="one PipelineExecution as JSON per line")
    p.add_argument("--batch", type=int, default=500, help="executions per request")
    p.set_defaults(run=send)


def send(args: argparse.Namespace) -> int:
    """Send the file's executions; the exit status (1 when any was rejected)."""
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
    with client(args) as pw:
        while done < len(batches):
            try:
                for response in pw.stream_ingest(batches[done:]):
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
                busy = escape(e.details() or "")
                err.print(f"[yellow]the server is busy ({busy}); sending again[/]")
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
                table.add_row(str(n), escape(eid), escape(reason))
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
