"""Run `pipewarden serve` as a real process, for tests of the command and of crashes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent / "pipewarden"


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limit_files(count: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


class ServerProcess:
    """`pipewarden serve` in a subprocess, with its output in a file."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        open_files: int | None = None,
    ) -> None:
        """`open_files`: the server's RLIMIT_NOFILE, soft and hard (as `ulimit -n` would)."""
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.output = data_dir.parent / f"server-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._out = self.output.open("wb")
        self.proc = subprocess.Popen(
            [
                str(BIN),
                "serve",
                "--listen",
                self.target,
                "--http-listen",
                "",
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=None if open_files is None else lambda: _limit_files(open_files),
        )

    def wait_serving(self, timeout: float = 20.0) -> None:
        """Block until the gRPC health check says SERVING."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"server not SERVING after {timeout}s: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig` and return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        """kill -9."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._out.close()

    def log(self) -> str:
        """What the server printed."""
        if not self._out.closed:
            self._out.flush()
        return self.output.read_text(errors="replace")
