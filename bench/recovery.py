"""Restarting: the time from process start to gRPC SERVING, and how fast the log replays.

A state of 10,000 pipelines is built from realistic executions (`bench.workload`: labels, times,
36-character ids, in a busy fleet's random order), with periodic snapshots off
(`snapshot_interval_seconds: 0`, `snapshot_log_bytes` far beyond the log), and started again
in two conditions. Each start is timed from just before the process is created until its gRPC
health check says SERVING (asked every 10 ms); the server is then killed with SIGKILL, which
writes nothing, so every start finds the same files.

- (a) log only: 1,000,000 events, then SIGKILL, so no snapshot is written (a clean stop writes
  one): each start replays the whole log.
- (b) snapshot and tail: the same directory started once more and stopped with SIGTERM, which
  writes a snapshot (and deletes the log segments it covers); started again, given 100,000 more
  events, and killed: each start restores the snapshot and replays the 100,000-event tail.
- An empty data directory gives the floor: the interpreter, the imports, listening.

Then the replay rate, in this process, on a copy of (a)'s log (see `bench.replay`): reading and
parsing it, the least any replay must do, against `server.recovery.recover()`.

Every start reads files that were just written, from the page cache: a cold disk adds to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import statistics
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import loadgen, replay
from bench.common import (
    STORE,
    VENV_BIN,
    Context,
    SectionResult,
    ServerProcess,
    Target,
    Worker,
    dir_bytes,
)
from bench.profile import phases, summarize
from bench.workload import Fleet, check_request
from pipewarden.v1 import service_pb2, service_pb2_grpc

__all__ = ["NAME", "TITLE", "run"]

NAME = "recovery"
TITLE = "Restart to SERVING, and log replay rate"

CONFIG: dict[str, Any] = {
    "server": {"snapshot_interval_seconds": 0, "snapshot_log_bytes": 1 << 50},
}
"""Snapshots only on a clean stop."""
BATCH = 1000
"""Executions per request while loading."""
STREAMS = 4
SEND_SECONDS = 180.0
"""The most one load of requests may take."""
START_SECONDS = 120.0
"""The most one start may take before it counts as failed."""
STOP_SECONDS = 120.0
"""How long a clean stop (which writes the snapshot) may take before it is killed."""
POLL_SECONDS = 0.01
"""How often a starting server's health is asked."""
TAIL_TARGET = Target("<", 1.0, "s")
RATIO_TARGET = Target(">=", 0.5)
PROFILE_RATE = 500
"""py-spy samples per second in the profiled start (a start takes a second or so)."""
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("snapshot: read and check", ("SnapshotStore.load_latest (snapshot.py)",)),
    (
        "snapshot: restore state",
        # _restore's own time is the compiled restores, which a sampler does not see into.
        (
            "ShardSet.restore (shards.py)",
            "SeenExecutions.restore (dedup.py)",
            "_restore (recovery.py)",
        ),
    ),
    ("log: open (scan)", ("WriteAheadLog._recover (wal.py)",)),
    (
        "log: replay",
        (
            "Ingestor.replay (ingest.py)",
            "Ingestor.replay_batch (ingest.py)",
            "Ingestor.replay_rows (ingest.py)",
            "Prefetch.take (prefetch.py)",
            "WriteAheadLog.read (wal.py)",
            "WriteAheadLog.replay (wal.py)",
            "AlertManager.replay (manager.py)",
            "_replay (recovery.py)",  # and the compiled apply, which a sampler does not see
        ),
    ),
    ("recovery: other", ("recover (recovery.py)",)),
    ("start: other", ("App.start (app.py)", "Partition.start (engine.py)")),
    ("imports", ("_find_and_load (<frozen importlib._bootstrap>)",)),
    (
        "background tasks, from SERVING until the kill",
        (
            "DetectionLoop._run (scheduling.py)",
            "Partition._snapshot_loop (engine.py)",
            "Partition._report_stats (engine.py)",
        ),
    ),
)
"""Where a profiled start's samples go: the first phase whose function is on the stack; "other"
is mostly setting up before recovery."""

_RECOVERED = re.compile(
    r"recovered in (?P<seconds>[\d.]+)s: (?P<pipelines>\d+) pipelines, (?P<events>\d+) events "
    r"replayed from (?P<entries>\d+) log entries"
)
_SERVING = re.compile(r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*serving gRPC", re.M)


@dataclasses.dataclass(frozen=True)
class _Plan:
    pipelines: int
    log_events: int
    tail_events: int
    starts_empty: int
    starts_log: int
    """Including the last, which stops cleanly to write the snapshot of (b)."""
    starts_tail: int
    trials: int
    """In-process replay timings of each kind."""


def _plan(quick: bool) -> _Plan:
    if quick:
        return _Plan(2_000, 100_000, 10_000, 1, 2, 2, 1)
    return _Plan(10_000, 1_000_000, 100_000, 3, 3, 5, 3)


# -- in the client worker -------------------------------------------------------------------------


def _build(pipelines: int, log_events: int, tail_events: int) -> dict[str, Any]:
    fleet = Fleet(pipelines, prefix="r")
    STORE["log"] = fleet.requests(fleet.random_order(log_events, 7), BATCH)
    STORE["tail"] = fleet.requests(fleet.random_order(tail_events, 8), BATCH)
    check_request(STORE["log"][0], fleet)
    check_request(STORE["tail"][-1], fleet)
    return {key: sum(len(r) for r in STORE[key]) for key in ("log", "tail")}


def _send(target: str, key: str) -> dict[str, Any]:
    return loadgen.blast(target, STORE.pop(key), streams=STREAMS, max_seconds=SEND_SECONDS)


# -- servers --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _started(
    ctx: Context, name: str, data_dir: Path, wrap: Sequence[str] = ()
) -> Iterator[tuple[ServerProcess, float]]:
    """Start Pipewarden on `data_dir`; yield it once SERVING, with the seconds that took; kill
    it (SIGKILL) when the block ends, unless it was stopped in the block."""
    server = ctx.start_pipewarden(name, data_dir, CONFIG, wrap=wrap)
    try:
        yield server, server.wait_serving(START_SECONDS, poll=POLL_SECONDS)
    finally:
        server.kill()


def _recovered(server: ServerProcess) -> dict[str, Any]:
    """What the server's log says: its "recovered in ..." figure and counts, and when (seconds
    from the process's start) it logged that it serves; what it does not say is left out."""
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return {}
    out: dict[str, Any] = {}
    m = _RECOVERED.search(text)
    if m is not None:
        out["server_seconds"] = float(m["seconds"])
        out |= {k: int(m[k]) for k in ("pipelines", "events", "entries")}
    m = _SERVING.search(text)
    if m is not None:
        logged = datetime.strptime(m["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out["serving_logged_seconds"] = logged - server.started_unix
    return out


def _timed_start(
    ctx: Context, name: str, data_dir: Path, expect: tuple[int, int] | None
) -> dict[str, Any]:
    """One start to SERVING, then SIGKILL. `expect` is (pipelines, events replayed) to check
    against the server's own account of its recovery."""
    with _started(ctx, name, data_dir) as (server, seconds):
        pass
    return _checked(server, seconds, expect)


def _checked(
    server: ServerProcess, seconds: float, expect: tuple[int, int] | None
) -> dict[str, Any]:
    """The start's time and the server's own account of its recovery, checked against `expect`
    (pipelines, events replayed) when the server's log has one."""
    out = {"seconds": seconds} | _recovered(server)
    if expect is not None and "pipelines" in out:
        got = (out["pipelines"], out["events"])
        if got != expect:
            raise RuntimeError(
                f"{server.name}: recovered (pipelines, events) {got}, expected {expect}"
            )
    return out


def _load(worker: Worker, server: ServerProcess, key: str, expected: int) -> dict[str, Any]:
    """Send STORE[key]; check that every event counted and that the server still serves (a
    server told to stop drains its streams, and its snapshot would change what is measured)."""
    out: dict[str, Any] = worker.call(_send, server.target, key, timeout=SEND_SECONDS + 60)
    server.check_alive()
    if out["accepted"] != expected:
        raise RuntimeError(f"{server.name}: {out['accepted']} of {expected} accepted: {out}")
    with grpc.insecure_channel(server.target) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status
    if status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(
            f"{server.name} stopped serving during the load (was it sent a signal?); its log "
            f"ends:\n{server.log_tail()}"
        )
    return out


def _counted(server: ServerProcess) -> int:
    """Executions the server counts, over all teams."""
    with grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.PipelineMonitorStub(channel)
        teams = stub.ListTeamMetrics(service_pb2.ListTeamMetricsRequest(), timeout=30).teams
    return sum(t.total_executions for t in teams)


def _disk(data_dir: Path) -> dict[str, int]:
    return {
        "wal_bytes": dir_bytes(data_dir / "wal"),
        "wal_segments": len(list((data_dir / "wal").glob("*.seg"))),
        "snapshot_bytes": dir_bytes(data_dir / "snapshots"),
        "snapshots": len(list((data_dir / "snapshots").glob("*.snap"))),
    }


def _children(pid: int) -> list[int]:
    """The child processes of `pid`, from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _profiled_start(ctx: Context, data_dir: Path) -> dict[str, Any]:
    """One more start of (b), run by py-spy from its first instruction; where the time went."""
    spy = VENV_BIN / "py-spy"
    if not spy.exists():
        found = shutil.which("py-spy")
        if found is None:
            return {"error": "py-spy is not installed: pip install py-spy"}
        spy = Path(found)
    out = ctx.logdir / "recovery-profile.txt"
    out.unlink(missing_ok=True)
    # --gil: only the thread holding the GIL, so idle threads do not count as work.
    wrap = [str(spy), "record", "--rate", str(PROFILE_RATE), "--gil", "--format", "raw",
            "--output", str(out), "--"]  # fmt: skip
    server = ctx.start_pipewarden("recovery-profiled", data_dir, CONFIG, wrap=wrap)
    try:
        seconds = server.wait_serving(START_SECONDS, poll=POLL_SECONDS)
    finally:
        # py-spy writes its file once the server it runs is gone.
        for pid in _children(server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            server.proc.wait(timeout=30)
        server.kill()
    samples = phases(out, PHASES)
    return {
        "file": str(out),
        "seconds_under_py_spy": seconds,
        "phase_seconds": {k: n / PROFILE_RATE for k, n in samples.items()},
        "top_self": summarize(out, 15),
        "top_total": summarize(out, 40, by="total"),
    }


# -- the section ----------------------------------------------------------------------------------


def run(ctx: Context) -> SectionResult:
    """Time starts to SERVING from (a) a log only and (b) a snapshot and a tail; time replay."""
    res = SectionResult(NAME, TITLE)
    plan = _plan(ctx.quick)
    data = ctx.workdir / "state"
    copy = ctx.workdir / "replay-copy"
    starts: dict[str, list[dict[str, Any]]] = {"empty": [], "log": [], "tail": []}
    res.details.update(plan=dataclasses.asdict(plan), config=CONFIG, batch=BATCH, starts=starts)
    with ctx.worker() as worker:
        res.details["request_bytes"] = worker.call(
            _build, plan.pipelines, plan.log_events, plan.tail_events, timeout=300
        )
        for i in range(plan.starts_empty):
            empty = ctx.workdir / f"empty-{i}"
            empty.mkdir()
            starts["empty"].append(_timed_start(ctx, f"recovery-empty-{i}", empty, None))

        # (a): the log only.
        data.mkdir()
        with _started(ctx, "recovery-load", data) as (server, _):
            res.details["load"] = _load(worker, server, "log", plan.log_events)
        res.details["disk_log"] = _disk(data)
        shutil.copytree(data / "wal", copy / "wal")
        (copy / "snapshots").mkdir()
        expect_log = (plan.pipelines, plan.log_events)
        for i in range(plan.starts_log):
            name = f"recovery-log-{i}"
            if i < plan.starts_log - 1:
                starts["log"].append(_timed_start(ctx, name, data, expect_log))
                continue
            # The last start stops cleanly: its snapshot is where (b) starts from.
            with _started(ctx, name, data) as (server, seconds):
                if _counted(server) != plan.log_events:
                    raise RuntimeError(f"{name} does not count {plan.log_events:,} executions")
                server.stop(STOP_SECONDS)
                if server.proc.returncode != 0:
                    raise RuntimeError(f"{name} stopped with status {server.proc.returncode}")
            starts["log"].append(_checked(server, seconds, expect_log))
        ctx.log(f"recovery (a): starts {_seconds(starts['log'])}")

        # (b): the snapshot and a tail.
        with _started(ctx, "recovery-tail-load", data) as (server, seconds):
            only = _checked(server, seconds, (plan.pipelines, 0))
            res.details["start_snapshot_only"] = only
            res.details["tail_load"] = _load(worker, server, "tail", plan.tail_events)
    res.details["disk_tail"] = _disk(data)
    if res.details["disk_tail"]["snapshots"] != 1:
        raise RuntimeError(f"expected one snapshot, found {res.details['disk_tail']}")
    expect_tail = (plan.pipelines, plan.tail_events)
    for i in range(plan.starts_tail):
        name = f"recovery-tail-{i}"
        if i == 0:
            with _started(ctx, name, data) as (server, seconds):
                counted = _counted(server)
            total = plan.log_events + plan.tail_events
            if counted != total:
                raise RuntimeError(f"{name} counts {counted:,} executions, not {total:,}")
            starts["tail"].append(_checked(server, seconds, expect_tail))
        else:
            starts["tail"].append(_timed_start(ctx, name, data, expect_tail))
    ctx.log(f"recovery (b): starts {_seconds(starts['tail'])}")
    tail_median = statistics.median(s["seconds"] for s in starts["tail"])
    if ctx.profile or not TAIL_TARGET.met(tail_median):
        res.details["profile"] = profile = _profiled_start(ctx, data)
        _log_profile(ctx, profile)

    res.details["replay"] = runs = replay.rates(ctx, copy, CONFIG, plan.trials, plan.log_events)
    shutil.rmtree(copy)
    _report(res, plan, starts, runs)
    return res


def _log_profile(ctx: Context, profile: dict[str, Any]) -> None:
    if "error" in profile:
        ctx.log(f"recovery (b) not profiled: {profile['error']}")
        return
    ctx.log(
        f"recovery (b) start under py-spy: {profile['seconds_under_py_spy']:.2f}s to SERVING; "
        f"seconds holding the GIL, by phase (stacks in {profile['file']}):"
    )
    for phase, seconds in profile["phase_seconds"].items():
        ctx.log(f"  {seconds:6.2f}s  {phase}")
    ctx.log("hottest functions by self time:")
    for row in profile["top_self"][:12]:
        ctx.log(f"  {row['self']:6.1%} self {row['total']:6.1%} total  {row['function']}")


def _seconds(starts: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['seconds']:.2f}s" for s in starts)


def _server_says(starts: list[dict[str, Any]]) -> str:
    """The medians of what the servers' logs say, for a note."""
    parts = []
    for key, text in (("server_seconds", "recovered in"), ("serving_logged_seconds", "serving at")):
        found = [s[key] for s in starts if key in s]
        if found:
            parts.append(f"{text} {statistics.median(found):.2f}s")
    return f"; server log: {', '.join(parts)}" if parts else ""


def _report(
    res: SectionResult,
    plan: _Plan,
    starts: dict[str, list[dict[str, Any]]],
    runs: dict[str, list[dict[str, Any]]],
) -> None:
    at = f"{plan.pipelines:,} pipelines"
    median = {k: statistics.median(s["seconds"] for s in v) for k, v in starts.items()}
    res.add(
        "start to SERVING, empty data directory",
        median["empty"],
        "s",
        note=f"the floor (interpreter, imports, listening); {_seconds(starts['empty'])}",
    )
    res.add(
        f"(a) start to SERVING, {plan.log_events:,} events in the log only, {at}",
        median["log"],
        "s",
        note=f"median of {_seconds(starts['log'])}{_server_says(starts['log'])}",
    )
    only = res.details["start_snapshot_only"]["seconds"]
    res.add(
        f"(b) start to SERVING, snapshot + {plan.tail_events:,}-event tail, {at}",
        median["tail"],
        "s",
        TAIL_TARGET,
        note=f"median of {_seconds(starts['tail'])}{_server_says(starts['tail'])}; "
        f"snapshot alone {only:.2f}s",
    )
    log_disk, tail_disk = res.details["disk_log"], res.details["disk_tail"]
    per_event = log_disk["wal_bytes"] / plan.log_events
    res.add(
        "(a) on disk: wal/",
        log_disk["wal_bytes"] / 2**20,
        "MiB",
        note=f"{log_disk['wal_segments']} segment(s); {per_event:.0f} B per event",
    )
    res.add(
        "(b) on disk: wal/",
        tail_disk["wal_bytes"] / 2**20,
        "MiB",
        note=f"{tail_disk['wal_segments']} segment(s), after the snapshot deleted those it covers",
    )
    res.add(
        "(b) on disk: snapshots/",
        tail_disk["snapshot_bytes"] / 2**20,
        "MiB",
        note=f"{tail_disk['snapshots']} snapshot(s), {plan.pipelines:,} pipelines and "
        f"{plan.log_events:,} execution ids",
    )
    best = {k: max(r["events_per_second"] for r in v) for k, v in runs.items()}
    opening = min(r["open_seconds"] for r in runs["read"])
    res.add(
        f"replay (i) read and parse, {plan.log_events:,} events",
        best["read"],
        "events/s",
        note=f"best of {len(runs['read'])}; the log's opening scan ({opening:.2f}s) not included",
    )
    res.add(
        f"replay (ii) recover(), {plan.log_events:,} events",
        best["recover"],
        "events/s",
        note=f"best of {len(runs['recover'])}; opening scan included",
    )
    paired = [
        b["events_per_second"] / a["events_per_second"]
        for a, b in zip(runs["read"], runs["recover"], strict=True)
    ]
    res.add(
        "ratio replay (ii)/(i)",
        best["recover"] / best["read"],
        "ratio",
        RATIO_TARGET,
        note=f"best/best; paired trials {', '.join(f'{x:.2f}' for x in paired)}",
    )
    fetched = max(runs["prefetch"], key=lambda r: r["events_per_second"])
    res.add(
        "replay (iii) recover() with the replay prefetch, as `serve` starts it",
        best["prefetch"],
        "events/s",
        note=f"best of {len(runs['prefetch'])}, {best['prefetch'] / best['read']:.2f} of (i); "
        f"the helper converted {fetched['prefetched_entries']:,} of "
        f"{fetched['entries']:,} entries (two processes on this machine's cores)",
    )
