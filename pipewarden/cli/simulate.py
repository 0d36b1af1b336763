"""`pipewarden simulate`: stream a simulated fleet of pipelines to the server."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from pipewarden.cli.options import add_client_options, credentials, metadata
from pipewarden.cli.output import console

__all__ = ["add_parser", "simulate"]


def add_parser(sub: Any) -> None:
    """Add `simulate` to the subcommands."""
    p = add_client_options(
        sub.add_parser("simulate", help="stream a simulated fleet of pipelines to the server")
    )
    p.add_argument("--teams", type=int, default=8)
    p.add_argument("--pipelines", type=int, default=200)
    p.add_argument("--days", type=float, default=3.0, help="days of history to simulate")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--faults",
        type=float,
        default=0.05,
        help="fraction of pipelines with an injected fault (0 to 1)",
    )
    p.add_argument("--batch", type=int, default=500, help="executions per request")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=simulate)


def simulate(args: argparse.Namespace) -> int:
    """Simulate the fleet the options describe and send its history."""
    from pipewarden import simulate as fleet

    spec = fleet.FleetSpec(
        teams=args.teams,
        pipelines=args.pipelines,
        days=args.days,
        seed=args.seed,
        faults=args.faults,
    )
    began = time.perf_counter()
    result = asyncio.run(
        fleet.run(
            args.target,
            spec,
            batch_size=args.batch,
            progress=not args.no_progress,
            metadata=metadata(args),
            credentials=credentials(args),
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
