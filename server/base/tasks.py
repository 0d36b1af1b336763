"""Long-lived tasks that cannot vanish.

Every loop of the server (snapshots, detection, alert timers, the alert feed, the notifiers, the
log's writer) runs as a task for as long as the process. One that ends with an exception nobody
awaits would die silently, and the server would go on without its snapshots or its alerts. So
each is started with `spawn`: when it dies, its traceback is logged at once and the supervisor
is told, which stops the server (see App). Owners stop their tasks with `stop`, which does not
raise again what was already reported.

The supervisor is a context variable: `supervise` in the task that starts the parts, and every
task spawned from there (or from tasks it spawned) reports to it. Parts built without one (unit
tests) still log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

__all__ = ["OnDeath", "spawn", "stop", "supervise"]

log = logging.getLogger(__name__)

OnDeath = Callable[[str, BaseException], None]
"""Told the name of a task that died and what it died of."""

_supervisor: ContextVar[OnDeath | None] = ContextVar("pipewarden_supervisor", default=None)


def supervise(on_death: OnDeath) -> None:
    """Tell `on_death` of every task spawned from now on in this context that dies."""
    _supervisor.set(on_death)


def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Start a long-lived task whose death (an exception other than cancellation) is logged
    with its traceback and told to the supervisor."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(functools.partial(_ended, _supervisor.get()))
    return task


def _ended(on_death: OnDeath | None, task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is None:
        return
    log.critical("task %s died: %r", task.get_name(), error, exc_info=error)
    if on_death is not None:
        on_death(task.get_name(), error)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has ended. What it died of, if it died, was reported
    when it died and is not raised again."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: asyncio does not complain of it again at exit
