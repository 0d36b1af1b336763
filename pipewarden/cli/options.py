"""What every client command shares: the options that name and reach the server, the client
they make, and how a failed call is told."""

from __future__ import annotations

import argparse
import getpass
import os
from typing import TYPE_CHECKING

import grpc

from pipewarden.cli.output import err, escape

if TYPE_CHECKING:
    from pipewarden.client import Client

__all__ = ["add_client_options", "client", "credentials", "metadata", "rpc_error", "whoami"]


def add_client_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --target, --token, the TLS files and --json to a client command's parser."""
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


def credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """The channel's TLS credentials from the options, None for plain text."""
    from pipewarden.client import tls_credentials

    return tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)


def client(args: argparse.Namespace) -> Client:
    """A client of the server the options name."""
    # Imported here: `serve` never needs the client, and every start would pay for it.
    from pipewarden.client import Client

    return Client(args.target, token=args.token, credentials=credentials(args))


def metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries the token, if any."""
    return (("authorization", f"Bearer {args.token}"),) if args.token else ()


def whoami() -> str:
    """The login name, the default of --by ("" when there is none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def rpc_error(e: grpc.RpcError, args: argparse.Namespace) -> int:
    """Say why a call failed, on standard error; the exit status (1)."""
    code = e.code() if isinstance(e, grpc.Call) else None
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    if code == grpc.StatusCode.UNAVAILABLE:
        target = getattr(args, "target", "")
        err.print(
            f"[red]error:[/] cannot reach Pipewarden at {escape(target)} ({escape(details)}). "
            "Is it running? Start it with `pipewarden serve` or `make run`."
        )
    else:
        name = code.name if code is not None else "error"
        err.print(f"[red]error:[/] {name}: {escape(details)}")
    return 1
