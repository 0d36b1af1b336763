"""`pipewarden serve`: run the server."""

from __future__ import annotations

import argparse
from typing import Any

from pipewarden.cli.output import err, escape

__all__ = ["add_parser", "serve"]


def add_parser(sub: Any) -> None:
    """Add `serve` to the subcommands."""
    serve_cmd: argparse.ArgumentParser = sub.add_parser("serve", help="run the server")
    serve_cmd.add_argument("--config", help="YAML configuration file")
    serve_cmd.add_argument("--listen", help="gRPC address HOST:PORT (default 127.0.0.1:50051)")
    serve_cmd.add_argument("--http-listen", help="HTTP address HOST:PORT (default 127.0.0.1:9095)")
    serve_cmd.add_argument("--data-dir", help="where the log and snapshots live (default ./var)")
    serve_cmd.add_argument(
        "--repair",
        action="store_true",
        help="cut a log damaged where a crash cannot have left it (not a torn tail) at the "
        "damage, losing what follows, instead of refusing to start",
    )
    serve_cmd.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address with no auth.tokens configured (anyone who can "
        "reach it can read and write every team's data)",
    )
    serve_cmd.set_defaults(run=serve)


def serve(args: argparse.Namespace) -> int:
    """Load the configuration and run the server until it is stopped; the exit status."""
    from pipewarden.server import app
    from pipewarden.server.base.errors import ConfigError
    from pipewarden.server.config import load

    try:
        config = load(args.config).with_overrides(
            listen=args.listen, http_listen=args.http_listen, data_dir=args.data_dir
        )
    except ConfigError as e:
        err.print(f"[red]error:[/] {escape(str(e))}")
        return 2
    return app.run(config, repair=args.repair, insecure=args.insecure)
