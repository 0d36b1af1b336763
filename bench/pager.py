"""A local stand-in for PagerDuty's Events API v2, for the notify benchmark.

`python -m bench.pager --port PORT` answers POST /v2/enqueue with 202 and the dedup_key, as
PagerDuty does, and notes when each event arrived (time.monotonic(), which on Linux is one clock
for every process of the machine, so the sender's submit times compare with it). GET /arrivals
returns {dedup_key: [arrival, ...]}; GET /triggers returns {payload.component (the pipeline):
[arrival, ...]} of the trigger events; GET /ready answers once it listens.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

from aiohttp import web

__all__ = ["app", "main"]


def app() -> web.Application:
    """The peer's aiohttp application."""
    arrivals: dict[str, list[float]] = defaultdict(list)
    triggers: dict[str, list[float]] = defaultdict(list)

    async def enqueue(request: web.Request) -> web.Response:
        now = time.monotonic()
        body = json.loads(await request.read())
        key = str(body.get("dedup_key", ""))
        arrivals[key].append(now)
        if body.get("event_action") == "trigger":
            triggers[str(body.get("payload", {}).get("component", ""))].append(now)
        answer = {"status": "success", "message": "Event processed", "dedup_key": key}
        return web.json_response(answer, status=202)

    async def get_arrivals(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def get_triggers(request: web.Request) -> web.Response:
        return web.json_response(triggers)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    application = web.Application()
    application.router.add_post("/v2/enqueue", enqueue)
    application.router.add_get("/arrivals", get_arrivals)
    application.router.add_get("/triggers", get_triggers)
    application.router.add_get("/ready", ready)
    return application


def main() -> None:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.pager")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
