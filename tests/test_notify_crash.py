"""kill -9 never loses a page: a real process submits a CRITICAL alert while the pager is down,
is killed, and a restarted process delivers exactly that page once the pager is back. Killed in
the middle of an attempt instead, the restart sends it again (at least once), with the same
dedup_key, so PagerDuty keeps one incident."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.support.peers import PD_PATH, Answer, HttpPeer

ROOT = Path(__file__).resolve().parent.parent


async def spawn(data: Path, peer: HttpPeer, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.notify_process",
        "--data-dir", str(data), "--pagerduty-url", peer.url(PD_PATH), *extra,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def read_until(proc: asyncio.subprocess.Process, prefix: str, within: float = 20) -> str:
    """The first line of the process's output that starts with `prefix`."""
    assert proc.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(within):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise AssertionError(f"exited before {prefix!r}: {''.join(seen)}")
            line = raw.decode()
            seen.append(line)
            if line.startswith(prefix):
                return line


async def finish(proc: asyncio.subprocess.Process, within: float = 20) -> str:
    """Wait for the process to exit on its own; its remaining output."""
    async with asyncio.timeout(within):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def kill9(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL


async def test_a_page_pending_while_the_pager_is_down_survives_kill_9(tmp_path: Path) -> None:
    peer = HttpPeer()  # not listening yet: the pager is down
    data = tmp_path / "data"
    first = await spawn(data, peer, "--submit", "crash-1")
    try:
        await read_until(first, "durable ")
        await asyncio.sleep(0.3)  # several refused attempts
    finally:
        await kill9(first)
    assert peer.requests == []

    await peer.start()
    try:
        second = await spawn(data, peer, "--exit-when-idle")
        assert "1 pending" in await read_until(second, "started")
        await finish(second)
        (page,) = peer.received(PD_PATH)
        assert page.status == 202
        assert page.body["dedup_key"] == "pipewarden-crash-1"
        assert page.body["event_action"] == "trigger"
        assert page.body["payload"]["severity"] == "critical"
        # Settled: a third start has nothing to send.
        third = await spawn(data, peer, "--exit-when-idle")
        assert "0 pending" in await read_until(third, "started")
        await finish(third)
    finally:
        await peer.stop()
    assert len(peer.requests) == 1


async def test_killed_during_an_attempt_the_page_is_sent_again_with_its_dedup_key(
    tmp_path: Path,
) -> None:
    peer = HttpPeer()
    peer.script(PD_PATH, Answer(202, "{}", delay=10))  # the first attempt never gets its answer
    await peer.start()
    data = tmp_path / "data"
    try:
        first = await spawn(data, peer, "--submit", "crash-2")
        try:
            await read_until(first, "durable ")
            async with asyncio.timeout(10):
                await peer.incoming.wait()
        finally:
            await kill9(first)
        second = await spawn(data, peer, "--exit-when-idle")
        await finish(second)
    finally:
        await peer.stop()
    keys = [r.body["dedup_key"] for r in peer.requests]
    assert keys == ["pipewarden-crash-2", "pipewarden-crash-2"]
    assert peer.requests[1].status == 202
