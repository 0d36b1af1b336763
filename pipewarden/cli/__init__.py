"""The `pipewarden` command: run the server, send events, and read what it knows.

Client commands talk to a running server (--target, default 127.0.0.1:50051) and print tables,
or JSON with --json. One module per command group: `serve`, `send`, `reads` (health, teams,
anomalies), `alerts` (alerts, watch, ack, silence), `simulate`, `deadletters`; beside them
`options` (what every client command shares) and `output` (how they print).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import grpc

from pipewarden.cli import alerts, deadletters, reads, send, serve, simulate
from pipewarden.cli.options import rpc_error

__all__ = ["main", "parser"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    commands = parser()
    args = commands.parse_args(argv)
    if not getattr(args, "command", None):
        commands.print_help()
        return 2
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return command(args)
    except grpc.RpcError as e:
        return rpc_error(e, args)
    except KeyboardInterrupt:
        return 130


def parser() -> argparse.ArgumentParser:
    """The command line's parser, every command group's subcommands in it."""
    top = argparse.ArgumentParser(prog="pipewarden", description="Monitoring for data pipelines.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    serve.add_parser(sub)
    deadletters.add_parser(sub)
    send.add_parser(sub)
    reads.add_parsers(sub)
    alerts.add_parsers(sub)
    simulate.add_parser(sub)
    return top
