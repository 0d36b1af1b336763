"""What every section shares: figures and targets, server processes, the client worker process,
and percentiles.

A section starts its servers with `Context.pipewarden()` / `Context.sink()` (each a subprocess on
a free loopback port, ready once its gRPC health check says SERVING, stopped when the `with`
block ends, even on error) and runs client code in `Context.worker()`, a separate process, so
that neither the servers nor the load generator share a GIL with the harness or each other.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import operator
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

__all__ = [
    "HOST",
    "Context",
    "Figure",
    "SectionResult",
    "ServerProcess",
    "Target",
    "Worker",
    "dir_bytes",
    "free_port",
    "percentile",
    "summarize_ms",
]

HOST = "127.0.0.1"
"""Every server listens on loopback only."""

REPO = Path(__file__).resolve().parent.parent
"""The repository: servers run from here, so `python -m bench.sink` finds the package."""

VENV_BIN = Path(sys.executable).parent
"""The venv's bin directory: where `pipewarden` and `py-spy` are installed."""

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Target:
    """A threshold a figure should meet, such as `>= 0.5`."""

    op: str
    """One of >=, >, <=, <."""
    value: float
    """The threshold, in the figure's unit."""
    unit: str = ""
    """The unit to print after the threshold."""

    def met(self, value: float) -> bool:
        """Whether `value` meets the target (NaN never does)."""
        return not math.isnan(value) and _OPS[self.op](value, self.value)

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.op} {self.value:g}{unit}"


@dataclass
class Figure:
    """One reported number."""

    section: str
    """The section that measured it."""
    name: str
    """What it is, in words, with its conditions (sizes, counts)."""
    value: float
    """The number."""
    unit: str
    """Its unit: events/s, ms, ratio, B, KiB..."""
    target: Target | None = None
    """What it should meet, when it has a target."""
    note: str = ""
    """A short remark printed beside it."""

    @property
    def passed(self) -> bool | None:
        """True or False against the target; None without one."""
        return None if self.target is None else self.target.met(self.value)

    def to_json(self) -> dict[str, Any]:
        """The figure as a JSON object."""
        return {
            "section": self.section,
            "name": self.name,
            "value": None if math.isnan(self.value) else self.value,
            "unit": self.unit,
            "target": None
            if self.target is None
            else {"op": self.target.op, "value": self.target.value, "text": str(self.target)},
            "passed": self.passed,
            "note": self.note,
        }


@dataclass
class SectionResult:
    """What one section measured: its figures and the raw numbers behind them."""

    name: str
    """The section's name, as given on the command line."""
    title: str
    """A heading for the table."""
    figures: list[Figure] = field(default_factory=list)
    """The figures, in the order to print them."""
    details: dict[str, Any] = field(default_factory=dict)
    """Everything else worth keeping (every repeat, counts, settings), JSON-serializable."""
    seconds: float = 0.0
    """How long the section took."""
    error: str | None = None
    """The error that stopped the section, if one did."""

    def add(
        self,
        name: str,
        value: float,
        unit: str,
        target: Target | None = None,
        note: str = "",
    ) -> Figure:
        """Record a figure."""
        fig = Figure(self.name, name, value, unit, target, note)
        self.figures.append(fig)
        return fig


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, linearly interpolated; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """count, mean, p50, p90, p99 and max of durations given in seconds, in milliseconds."""
    ms = sorted(s * 1000.0 for s in seconds)
    return {
        "count": len(ms),
        "mean": sum(ms) / len(ms) if ms else math.nan,
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": ms[-1] if ms else math.nan,
    }


def dir_bytes(root: Path) -> int:
    """How many bytes the files under `root` hold (0 when it does not exist)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- server processes -----------------------------------------------------------------------------


class ServerProcess:
    """A gRPC server in a subprocess on a loopback port, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.target = f"{HOST}:{port}"
        self._log = log_path.open("wb")
        self.started = time.perf_counter()
        """When the process was started (perf_counter), for timing start to SERVING."""
        self.started_unix = time.time()
        """The same moment by the wall clock, to compare with the times in the server's log."""
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def wait_serving(self, timeout: float = 60.0, poll: float = 0.05) -> float:
        """Block until the server's health check answers SERVING, asking every `poll` seconds;
        return the seconds from the process's start until it did."""
        deadline = time.monotonic() + timeout
        request = health_pb2.HealthCheckRequest(service="")
        # gRPC waits a second or more before reconnecting after a refused connection; a server
        # that is still starting refuses, so ask it to retry at the polling pace instead.
        backoff_ms = max(10, int(poll * 1000))
        options = [
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ]
        with grpc.insecure_channel(self.target, options=options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with status {self.proc.returncode} before serving; "
                        f"its log ends:\n{self.log_tail()}"
                    )
                try:
                    status = stub.Check(request, timeout=1.0).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - self.started
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.name} did not serve within {timeout:g}s; its log ends:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(poll)

    def check_alive(self) -> None:
        """Raise, with the end of its log, when the server has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited unexpectedly with status {self.proc.returncode}; "
                f"its log ends:\n{self.log_tail()}"
            )

    def rss_bytes(self) -> int:
        """The server's resident set size now (VmRSS), in bytes."""
        return self._status_kib("VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        """The server's peak resident set size so far (VmHWM), in bytes."""
        return self._status_kib("VmHWM") * 1024

    def _status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {key} in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's output."""
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @contextlib.contextmanager
    def profiled(self, out: Path, rate: int = 250) -> Iterator[None]:
        """Sample the server with py-spy while the block runs; write collapsed stacks to `out`.

        Does nothing (but say so in `out`) when py-spy is not installed."""
        spy = VENV_BIN / "py-spy"
        if not spy.exists():
            found = shutil.which("py-spy")
            if found is None:
                out.write_text("py-spy is not installed: pip install py-spy\n")
                yield
                return
            spy = Path(found)
        argv = [str(spy), "record", "--pid", str(self.pid), "--rate", str(rate),
                "--format", "raw", "--nonblocking", "--output", str(out)]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)  # let py-spy attach before the measured work starts
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean stop, no final snapshot. Idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# -- the client worker ----------------------------------------------------------------------------


class Worker:
    """A separate process that runs module-level client functions on request.

    `call(fn, *args)` pickles the function by reference and its arguments, runs it in the worker
    and returns its result; an exception there is raised here as a RuntimeError with the worker's
    traceback. Functions may keep state between calls in `STORE` (in the worker's memory), so
    big pre-built requests never cross the process boundary.
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child,), name="bench-client", daemon=True
        )
        self.proc.start()
        child.close()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 120.0) -> Any:
        """Run `fn(*args)` in the worker and return its result."""
        self._conn.send((fn, args))
        if not self._conn.poll(timeout):
            self.close()
            raise TimeoutError(f"the client worker did not finish {fn.__name__} in {timeout:g}s")
        try:
            ok, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(
                f"the client worker died running {fn.__name__} (exit status {self.proc.exitcode})"
            ) from None
        if not ok:
            raise RuntimeError(f"{fn.__name__} failed in the client worker:\n{value}")
        return value

    def close(self) -> None:
        """Stop the worker. Idempotent."""
        if self.proc.is_alive():
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(None)
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self._conn.close()


STORE: dict[str, Any] = {}
"""State that client functions keep in the worker between calls."""


def _worker_main(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the harness stops us; ^C goes to it
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        fn, args = item
        try:
            conn.send((True, fn(*args)))
        except BaseException:
            conn.send((False, traceback.format_exc()))


# -- the context a section runs in ----------------------------------------------------------------


@dataclass
class Context:
    """What the harness hands each section."""

    quick: bool
    """Smaller sizes, for a smoke run."""
    console: Console
    """Where to print progress."""
    workdir: Path
    """A scratch directory for the servers' data directories; removed after the run."""
    logdir: Path
    """Where server logs and profiles are kept after the run (bench/out/)."""
    profile: bool = False
    """Whether sections should sample Pipewarden with py-spy where they support it."""

    def log(self, message: str) -> None:
        """A progress line."""
        self.console.log(message)

    @contextlib.contextmanager
    def pipewarden(
        self, name: str, config: dict[str, Any] | None = None, *, bin_dir: Path = VENV_BIN
    ) -> Iterator[ServerProcess]:
        """A fresh Pipewarden (empty data directory), serving until the block ends.

        `config` is a configuration document (as in pipewarden.yaml) for sections that compare
        settings; the command-line flags still set the addresses and the data directory.
        `bin_dir` holds the `pipewarden` to run: the development tree's by default, an installed
        wheel's (bench.wheel) to compare them."""
        data_dir = self.workdir / f"{name}-data"
        data_dir.mkdir(parents=True, exist_ok=False)
        server = self.start_pipewarden(name, data_dir, config, bin_dir=bin_dir)
        with self._serving(server):
            yield server

    def start_pipewarden(
        self,
        name: str,
        data_dir: Path,
        config: dict[str, Any] | None = None,
        *,
        wrap: Sequence[str] = (),
        bin_dir: Path = VENV_BIN,
    ) -> ServerProcess:
        """Start Pipewarden on `data_dir`, which may hold what an earlier server left, without
        waiting for it to serve; its log goes to `<logdir>/<name>.log`. `wrap` goes before the
        command (a profiler's, ending in "--"). The caller stops it, in a `finally`."""
        port = free_port()
        argv = [
            *wrap,
            str(bin_dir / "pipewarden"), "serve",
            "--listen", f"{HOST}:{port}",
            "--http-listen", "",
            "--data-dir", str(data_dir),
        ]  # fmt: skip
        if config is not None:
            path = self.workdir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            argv += ["--config", str(path)]
        return ServerProcess(name, argv, port, self.logdir / f"{name}.log")

    @contextlib.contextmanager
    def sink(self, name: str) -> Iterator[ServerProcess]:
        """The no-op StreamIngest server of `bench.sink`, serving until the block ends."""
        port = free_port()
        argv = [sys.executable, "-m", "bench.sink", "--listen", f"{HOST}:{port}"]
        with self._serving(ServerProcess(name, argv, port, self.logdir / f"{name}.log")) as server:
            yield server

    @contextlib.contextmanager
    def _serving(self, server: ServerProcess) -> Iterator[ServerProcess]:
        try:
            server.wait_serving()
            yield server
            server.check_alive()
        finally:
            server.stop()

    @contextlib.contextmanager
    def worker(self) -> Iterator[Worker]:
        """A client worker process, stopped when the block ends."""
        worker = Worker()
        try:
            yield worker
        finally:
            worker.close()

    def data_dir_bytes(self, name: str) -> int:
        """How many bytes the files of server `name`'s data directory hold."""
        return dir_bytes(self.workdir / f"{name}-data")
