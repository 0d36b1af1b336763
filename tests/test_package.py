"""What users install: `pip install` of a clean clone gives a server that runs the hot path compiled
(where a C compiler is), under the project's own name, and a build without a C compiler still
installs, as pure Python, and says why.

Each wheel is built from a `git clone` of HEAD with pip, as a user would (build isolation: the
build requirements come from the configured index or pip's cache), and installed with its
dependencies into a new virtual environment.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.wheel import build, install, site_packages
from pipewarden.client import execution
from pipewarden.server.core import compiled
from pipewarden.v1 import service_pb2, service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
BUILD_SECONDS = 300
"""A build compiles six modules with mypyc and gcc -O3: more than the suite's usual limit."""


@dataclass(frozen=True)
class Installed:
    """A wheel built from a clean clone, installed into a new virtual environment."""

    wheel: Path
    venv: Path
    log: Path
    """The output of the build and the install."""

    def python(self, code: str, **env: str) -> str:
        """Run `code` with the environment's interpreter, outside the repository; its output."""
        done = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code],
            cwd=self.venv,
            env=_clean_env() | env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()


def _clean_env() -> dict[str, str]:
    """This environment without what would change a build or a start (the pure-Python switch,
    a PYTHONPATH that could reach the development tree)."""
    return {k: v for k, v in os.environ.items() if k not in (compiled.PURE_ENV, "PYTHONPATH")}


def _install_clean_clone(tmp: Path, **env: str) -> Installed:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(tmp / "src")], check=True)
    log = tmp / "build.log"
    wheel = build(tmp / "src", tmp / "dist", log, _clean_env() | env)
    install(wheel, tmp / "venv", log)
    return Installed(wheel, tmp / "venv", log)


@pytest.fixture(scope="module")
def compiled_install(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    if sysconfig.get_config_var("CC") is None or shutil.which("cc") is None:
        pytest.skip("no C compiler here: the fallback test covers this machine")
    return _install_clean_clone(tmp_path_factory.mktemp("compiled"))


@pytest.fixture(scope="module")
def pure_install(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return _install_clean_clone(tmp_path_factory.mktemp("pure"), CC="false")


HOT_PATH_STATUS = (
    "from pipewarden.server.core import compiled, dedup, ingest, model, shards, validation, wire\n"
    "print(compiled.status())\n"
    "print(ingest.__file__)\n"
)


@pytest.mark.timeout(BUILD_SECONDS)
def test_the_wheel_holds_everything_under_the_pipewarden_name(compiled_install: Installed) -> None:
    with zipfile.ZipFile(compiled_install.wheel) as wheel:
        names = wheel.namelist()
    tops = {name.split("/")[0] for name in names}
    assert not tops & {"server", "notifiers", "protos"}
    # Beside pipewarden and its metadata, only mypyc's shared library of the hot path.
    others = {t for t in tops if t != "pipewarden" and not t.startswith("pipewarden-")}
    assert others and all("__mypyc." in t for t in others), others
    for name in compiled.MODULES:
        assert any(n.startswith(f"pipewarden/server/core/{name}.cpython-") for n in names), name
        assert f"pipewarden/server/core/{name}.py" in names  # the sources stay, for tracebacks
    site = site_packages(compiled_install.venv)
    assert not [p.name for p in site.iterdir() if p.name in ("server", "notifiers")]
    assert (site / "pipewarden" / "server" / "detection").is_dir()
    assert (site / "pipewarden" / "notifiers").is_dir()


@pytest.mark.timeout(BUILD_SECONDS)
def test_the_installed_hot_path_is_compiled_unless_switched_off(
    compiled_install: Installed,
) -> None:
    status, path = compiled_install.python(HOT_PATH_STATUS).splitlines()
    assert status == compiled.COMPILED
    assert path.startswith(str(site_packages(compiled_install.venv)))
    assert path.endswith(".so")
    status, path = compiled_install.python(HOT_PATH_STATUS, **{compiled.PURE_ENV: "1"}).split("\n")
    assert status == f"pure Python: {compiled.PURE_ENV} is set"
    assert path.endswith("ingest.py")


@pytest.mark.timeout(BUILD_SECONDS)
def test_the_installed_server_says_compiled_and_ingests(
    compiled_install: Installed, tmp_path: Path
) -> None:
    port = _free_port()
    output = tmp_path / "server.log"
    argv = [str(compiled_install.venv / "bin" / "pipewarden"), "serve",
            "--listen", f"127.0.0.1:{port}", "--http-listen", "",
            "--data-dir", str(tmp_path / "data")]  # fmt: skip
    with output.open("wb") as out:
        server = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=_clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_serving(channel, server, output)
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            run = execution("run-1", "sales.orders", "sales", "succeeded", records=5)
            answer = stub.Ingest(service_pb2.IngestRequest(executions=[run]), timeout=10)
            assert (answer.accepted, answer.duplicates, list(answer.rejected)) == (1, 0, [])
            health = stub.GetPipelineHealth(
                service_pb2.GetPipelineHealthRequest(pipeline_id="sales.orders"), timeout=10
            )
            assert health.total_executions == 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    start_line = next(line for line in output.read_text().splitlines() if "serving gRPC on" in line)
    assert start_line.endswith(f"hot path {compiled.COMPILED}"), start_line


@pytest.mark.timeout(BUILD_SECONDS)
def test_without_a_c_compiler_the_wheel_is_pure_python_and_says_why(
    pure_install: Installed,
) -> None:
    assert pure_install.wheel.name.endswith("-py3-none-any.whl")
    said = [line for line in pure_install.log.read_text().splitlines() if "pipewarden: hot" in line]
    assert len(said) == 1
    assert "pipewarden: hot path pure Python: no working C compiler (false: " in said[0]
    with zipfile.ZipFile(pure_install.wheel) as wheel:
        assert not [n for n in wheel.namelist() if n.endswith(".so")]
    status, path = pure_install.python(HOT_PATH_STATUS).splitlines()
    assert status.startswith("pure Python: installed from a wheel built without it: ")
    assert "no working C compiler (false: " in status
    assert path.endswith("ingest.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(channel: grpc.Channel, server: subprocess.Popen[bytes], output: Path) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the installed server exited ({server.returncode}):\n{output.read_text()}")
        try:
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            time.sleep(0.1)
    pytest.fail(f"the installed server did not serve within 30 s:\n{output.read_text()}")


def test_the_docker_image_compiles_in_its_build_stage_and_checks_it_runs_compiled() -> None:
    """No image is built here (tests/test_deploy.py says why); the build stage does what the
    fixtures above do, with the compiler it installs, and the final stage refuses a wheel whose
    hot path is not compiled."""
    build_stage, final_stage = (ROOT / "Dockerfile").read_text().split("\nFROM ")[1:]
    compiler = build_stage.index("apt-get install")
    assert "gcc" in build_stage[compiler:].splitlines()[0]
    copied = re.findall(r"^COPY (?!--from)(.+?) \S+$", build_stage, re.M)
    assert {"pyproject.toml", "setup.py"} <= {name for line in copied for name in line.split()}
    assert compiler < build_stage.index("pip wheel")
    assert "c.status() != c.COMPILED" in final_stage.replace("\\\n", "")
