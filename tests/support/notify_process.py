"""A process that runs a Dispatcher, for the crash tests: `python -m tests.support.notify_process`.

    --data-dir DIR --pagerduty-url URL [--submit ALERT_ID] [--exit-when-idle]

With --submit it submits a CRITICAL alert that pages, waits until the notification is durable in
the outbox and prints `durable <notification_id>`. Then it delivers (retrying every 50 ms at
most, without end) until SIGTERM, or, with --exit-when-idle, until nothing is left to deliver.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from pipewarden.notifiers.config import parse_receivers, parse_routes
from pipewarden.notifiers.dispatcher import Dispatcher
from tests.support.alert_events import event
from tests.support.peers import ROUTING_KEY


async def main(args: argparse.Namespace) -> int:
    receivers = parse_receivers(
        [
            {
                "name": "oncall",
                "type": "pagerduty",
                "url": args.pagerduty_url,
                "routing_key": ROUTING_KEY,
                "max_attempts": 1_000_000,
                "retry_initial_seconds": 0.01,
                "retry_max_seconds": 0.05,
                "timeout_seconds": 30,
            }
        ]
    )
    dispatcher = Dispatcher(
        receivers, parse_routes([{"critical": ["oncall"]}], ["oncall"]), data_dir=args.data_dir
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await dispatcher.start()
    print(f"started, {len(dispatcher.outbox.pending)} pending", flush=True)
    if args.submit:
        (n,) = dispatcher.submit(event(args.submit, "critical"))
        await dispatcher.outbox.wait_durable(n)
        print(f"durable {n.notification_id}", flush=True)
    if args.exit_when_idle:
        while not await dispatcher.drain(0.05):
            if stop.is_set():
                break
    else:
        await stop.wait()
    await dispatcher.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--pagerduty-url", required=True)
    parser.add_argument("--submit")
    parser.add_argument("--exit-when-idle", action="store_true")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parser.parse_args())))
