"""Failure streaks that jump past a threshold in one request alert, end to end over gRPC.

A runner SDK batches runs and resends them after an outage, so a streak often grows by several
failures in one request: it must alert at the highest threshold it crossed (HIGH from 3,
CRITICAL from 5 by default), whether the next success arrives in the next request or in the
same one, and however many pipelines the request carries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from pipewarden.server.config import Config
from pipewarden.server.core.limits import IngestLimits
from pipewarden.v1 import alert_pb2
from tests.support.alerting import (
    CRITICAL,
    HIGH,
    STREAK,
    Clock,
    Stub,
    Watcher,
    alerts,
    config,
    eventually,
    failures,
    send,
    serving,
    successes,
)
from tests.support.helpers import T0

LENGTHS = (3, 4, 6, 8, 20)
HISTORY = 30  # successful runs of each pipeline before its streak


def _config(tmp_path: Path, **server: Any) -> Config:
    """Failures in a row the only detector (others would alert on these pipelines too)."""
    cfg = config(tmp_path)
    return dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, **server))


def _severity(streak: int) -> int:
    return CRITICAL if streak >= 5 else HIGH


async def _streak_alerts(stub: Stub, expected: dict[str, int]) -> dict[str, alert_pb2.Alert]:
    """The failure alerts by pipeline, once every expected pipeline has one (or after 3 s)."""

    async def probe() -> dict[str, alert_pb2.Alert]:
        return {a.pipeline_id: a for a in await alerts(stub) if a.kind == STREAK}

    try:
        return await eventually(probe, lambda got: expected.keys() <= got.keys(), within=3.0)  # type: ignore[no-any-return]
    except TimeoutError:
        return await probe()


def _missed(found: dict[str, alert_pb2.Alert], expected: dict[str, int]) -> list[str]:
    """The pipelines without an alert of their streak's severity."""
    return sorted(
        pid for pid, sev in expected.items() if pid not in found or found[pid].severity != sev
    )


async def test_a_streak_that_jumps_past_a_threshold_in_one_request_alerts(
    tmp_path: Path,
) -> None:
    """The issue's scenario: 30 pipelines with 30 successes each, then one request of N
    failures, then one success; for each N every pipeline alerts at the severity its streak
    reached (before the fix: 30/30 at N=3, about a third at N=4 or more)."""
    async with serving(_config(tmp_path), Clock(T0 + 200 * 3600)) as (_, stub):
        pids = [f"n{n}-p{i:02}" for n in LENGTHS for i in range(30)]
        await send(stub, *(r for pid in pids for r in successes(pid, HISTORY)))
        expected: dict[str, int] = {}
        for n in LENGTHS:
            for i in range(30):
                pid = f"n{n}-p{i:02}"
                await send(stub, *failures(pid, n, start=HISTORY))
                await send(stub, *successes(pid, 1, start=HISTORY + n))
                expected[pid] = _severity(n)
        found = await _streak_alerts(stub, expected)
        assert _missed(found, expected) == []
        for pid, n in ((f"n{n}-p00", n) for n in LENGTHS):
            assert found[pid].observed == n, found[pid]
            assert f"{n} failures in a row" in found[pid].message
        # The success after each streak resolves its alert.
        resolved = await eventually(
            lambda: alerts(stub, state=alert_pb2.ALERT_STATE_RESOLVED),
            lambda got: len(got) >= len(expected),
        )
        assert {a.pipeline_id for a in resolved if a.kind == STREAK} == expected.keys()


async def test_a_streak_ended_within_its_request_still_alerts(tmp_path: Path) -> None:
    """The failures and the success that ends them in one request (a resend after an
    outage): the streak was real, so it alerts at the severity it reached, and resolves at
    once, since the success is already in."""
    async with serving(_config(tmp_path), Clock(T0 + 200 * 3600)) as (_, stub):
        expected: dict[str, int] = {}
        for n in LENGTHS:
            for i in range(30):
                pid = f"n{n}-p{i:02}"
                await send(stub, *successes(pid, HISTORY))
                await send(
                    stub,
                    *failures(pid, n, start=HISTORY),
                    *successes(pid, 1, start=HISTORY + n),
                )
                expected[pid] = _severity(n)
        found = await _streak_alerts(stub, expected)
        assert _missed(found, expected) == []
        resolved = await eventually(
            lambda: alerts(stub, state=alert_pb2.ALERT_STATE_RESOLVED),
            lambda got: len(got) >= len(expected),
        )
        assert {a.pipeline_id for a in resolved if a.kind == STREAK} == expected.keys()


async def test_a_thousand_streaks_in_one_request_all_alert_within_the_request(
    tmp_path: Path,
) -> None:
    """1,000 pipelines whose streaks of 3 to 20 failures arrive in one request: every one is
    judged in that request (each once, however many of its failures the request carries) and
    alerts at its streak's severity, before the next request ends the streaks."""
    limits = IngestLimits(max_executions_per_request=40_000)
    cfg = _config(tmp_path, limits=limits)
    async with serving(cfg, Clock(T0 + 200 * 3600)) as (app, stub):
        pids = [f"p{i:04}" for i in range(1000)]
        await send(stub, *(r for pid in pids for r in successes(pid, HISTORY)))
        # Let the detection pass over the history finish, so that what follows is the
        # request's own judging.
        await eventually(lambda: _noop(), lambda _: not app.partition.ingestor.pending)
        lengths = {pid: LENGTHS[i % len(LENGTHS)] for i, pid in enumerate(pids)}
        began = time.perf_counter()
        await send(stub, *(r for pid in pids for r in failures(pid, lengths[pid], start=HISTORY)))
        took = time.perf_counter() - began
        # Judged in the request: the alerts are there before anything else happens.
        expected = {pid: _severity(n) for pid, n in lengths.items()}
        now = {a.pipeline_id: a for a in await alerts(stub) if a.kind == STREAK}
        assert _missed(now, expected) == []
        assert took < 5.0, took
        await send(stub, *(r for pid in pids for r in successes(pid, 1, start=HISTORY + 20)))
        found = await _streak_alerts(stub, expected)
        assert _missed(found, expected) == []


async def _noop() -> None:
    return None


async def test_a_restart_does_not_page_again_for_streaks_judged_before_it(tmp_path: Path) -> None:
    """Replaying the log raises the streaks' peaks again; the alert changes logged after them
    mark them judged, so the first detection pass after the restart fires nothing anew: not
    for a streak that ended and resolved, nor for one still failing."""
    cfg = _config(tmp_path)
    clock = Clock(T0 + 200 * 3600)
    async with serving(cfg, clock) as (_, stub):
        await send(stub, *successes("ended", HISTORY), *successes("failing", HISTORY))
        await send(
            stub,
            *failures("ended", 6, start=HISTORY),
            *successes("ended", 1, start=HISTORY + 6),
            *failures("failing", 4, start=HISTORY),
        )
        before = await eventually(
            lambda: alerts(stub),
            lambda got: (
                [a.state for a in got if a.pipeline_id == "ended"]
                == [alert_pb2.ALERT_STATE_RESOLVED]
            ),
        )
    # The whole log replayed, without the snapshot the stop wrote.
    shutil.rmtree(Path(cfg.server.data_dir) / "snapshots")
    async with serving(cfg, clock) as (_, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await asyncio.sleep(0.3)  # the first pass over every recovered pipeline
        assert watcher.types() == []
        after = await alerts(stub)
        assert sorted((a.alert_id, a.state, a.severity) for a in after) == sorted(
            (a.alert_id, a.state, a.severity) for a in before
        )
        await watcher.close()
