"""The layout: every module imports alone, declares its public names, and no package imports
one that imports it back (the rooms of the server stand on each other in one order)."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import pipewarden

ROOT = Path(pipewarden.__file__).resolve().parent
GENERATED = ("pipewarden.v1", "pipewarden.storage")
"""Generated code: checked fresh by test_protos, not held to these rules."""


def _modules() -> Iterator[tuple[str, Path]]:
    # In a checkout, pipewarden/server and pipewarden/notifiers are links to the top-level
    # folders: follow them, as the import system does.
    paths = (
        Path(folder, name)
        for folder, _, names in os.walk(ROOT, followlinks=True)
        for name in names
        if name.endswith(".py")
    )
    for path in sorted(paths):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(("pipewarden", *parts)).removesuffix(".__init__")
        if not name.startswith(GENERATED):
            yield name, path


MODULES = dict(_modules())


def _package(module: str) -> str:
    """The package a module belongs to: itself for a package's __init__."""
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str) -> set[str]:
    """The modules of ours that `module` imports at its top level or in a function (a late
    import is still a dependency), resolved to module names."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in MODULES and m != module}


def test_the_walk_finds_the_layers() -> None:
    assert "pipewarden.server.core.ingest" in MODULES
    assert "pipewarden.notifiers.outbox" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_declares_public_names_that_exist(module: str) -> None:
    imported = importlib.import_module(module)
    if MODULES[module].name == "__init__.py" and not hasattr(imported, "__all__"):
        return  # a package that only groups its modules
    names = getattr(imported, "__all__", None)
    assert names is not None, f"{module} has no __all__"
    missing = [n for n in names if not hasattr(imported, n)]
    assert not missing, f"{module}.__all__ names what it lacks: {missing}"


def test_every_module_imports_alone() -> None:
    """Each module in a fresh interpreter, so that none leans on another having been imported
    first (pure Python: it is the sources' imports that are checked)."""

    def load(name: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            capture_output=True,
            text=True,
            env={**os.environ, "PIPEWARDEN_PURE_PYTHON": "1"},
        )
        return f"{name}: {out.stderr.strip().splitlines()[-1]}" if out.returncode else ""

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [f for f in pool.map(load, sorted(MODULES)) if f]
    assert not failed, "\n".join(failed)


def test_no_package_imports_one_that_imports_it_back() -> None:
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        package = _package(module)
        edges = graph.setdefault(package, set())
        edges.update(p for p in map(_package, _imports(module)) if p != package)
    # A package depends on its parent's __init__ only by being imported; parents that only
    # group their rooms (a docstring) carry no edges of their own.
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles between packages:\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )
