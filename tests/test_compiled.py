"""The hot path compiled with mypyc: used only when built from exactly these sources, and
deciding exactly what the pure Python does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

import pytest

from pipewarden.server.core import compiled

ROOT = Path(__file__).resolve().parent.parent


def _workload(*, pure: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.hot_path_workload"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.splitlines()


def test_compiled_and_pure_python_decide_and_keep_the_same() -> None:
    if compiled.status() != "compiled with mypyc":
        pytest.skip(f"no compiled build to compare: {compiled.status()}")
    fast, pure = _workload(pure=False), _workload(pure=True)
    assert fast[0] == "compiled with mypyc"
    assert pure[0] == f"pure Python: {compiled.PURE_ENV} is set"
    assert fast[1:] == pure[1:]  # the counts, then a digest of every outcome and all the state


@pytest.fixture(autouse=True)
def _restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """What activate() changes, put back after each test: sys.path and the reported status."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setattr(compiled, "_status", compiled.status())


def _build(tmp_path: Path, manifest: dict[str, object]) -> Path:
    (tmp_path / "server").mkdir()
    (tmp_path / compiled.MANIFEST).write_text(json.dumps(manifest))
    return tmp_path


def test_a_build_of_these_sources_goes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    path = ["/the/sources"]
    build = _build(tmp_path, compiled.manifest())
    assert compiled.activate(path, build) == "compiled with mypyc"
    assert path == [str(build / "pipewarden" / "server" / "core"), "/the/sources"]
    assert sys.path[-1] == str(build)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"sources": {**compiled.manifest()["sources"], "shards": "0" * 64}}, "other sources"),  # type: ignore[dict-item]
        ({"python": "cpython-27"}, "another Python"),
    ],
)
def test_a_build_of_other_sources_or_another_python_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, object], why: str
) -> None:
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    path = ["/the/sources"]
    build = _build(tmp_path, compiled.manifest() | change)
    said = compiled.activate(path, build)
    assert said.startswith("pure Python") and why in said
    assert path == ["/the/sources"]
    assert str(build) not in sys.path


def test_no_build_or_the_environment_variable_means_pure_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path: list[str] = []
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    assert "no compiled build" in compiled.activate(path, tmp_path)
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    assert compiled.PURE_ENV in compiled.activate(path, _build(tmp_path, compiled.manifest()))
    assert path == []


def _installed(tmp_path: Path) -> Path:
    """A package directory as a wheel installs it: each compiled module beside its source."""
    package = tmp_path / "core"
    package.mkdir()
    for name in compiled.MODULES:
        (package / f"{name}.py").write_text("")
        (package / f"{name}{EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    return package


def test_an_installed_wheel_runs_its_extension_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    path = [str(_installed(tmp_path))]
    assert compiled.activate(path, tmp_path / "no-build") == compiled.COMPILED
    assert path == [str(tmp_path / "core")]  # nothing to put ahead: the import finds them


def test_once_loaded_the_status_is_where_the_modules_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    package = _installed(tmp_path)
    assert compiled.activate([str(package)], tmp_path / "no-build") == compiled.COMPILED
    for name in compiled.MODULES:
        module = ModuleType(f"pipewarden.server.core.{name}")
        suffix = ".py" if name == "shards" else EXTENSION_SUFFIXES[0]
        module.__file__ = str(package / f"{name}{suffix}")
        monkeypatch.setitem(sys.modules, module.__name__, module)
    assert compiled.status() == "pure Python: pipewarden.server.core.shards loaded from source"


def test_the_environment_variable_also_switches_an_installed_wheel_to_its_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    package = _installed(tmp_path)
    assert compiled.activate([str(package)], tmp_path / "no-build").startswith("pure Python")
    finder = sys.meta_path[0]
    spec = finder.find_spec("pipewarden.server.core.ingest", None)
    assert spec is not None and spec.origin == str(package / "ingest.py")
    assert finder.find_spec("pipewarden.server.core.detect", None) is None  # not compiled


def test_a_wheel_built_without_a_compiler_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    package = tmp_path / "core"
    package.mkdir()
    (package / compiled.RECORD).write_text(json.dumps({"compiled": False, "why": "no cc"}))
    said = compiled.activate([str(package)], tmp_path / "no-build")
    assert said == "pure Python: installed from a wheel built without it: no cc"
