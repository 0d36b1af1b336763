"""The hot path compiled with mypyc, when a build of the current sources is there.

Every event of every request, and of every replay, passes through a few modules: turning a
message into an Execution (`validation`, `model`), deciding and applying it (`ingest`,
`shards`) and remembering its id (`dedup`). `make` compiles them with mypyc
(`scripts/compile.py`) into `build/mypyc/`, outside the source tree, with a manifest of the
sources' SHA-256 digests. When the `server` package is imported, `activate` puts the compiled
modules ahead of the sources, but only if every digest matches the source beside it and the
build is for this interpreter: an edited source is never shadowed by a stale build, it runs as
Python until the next `make`. Without a C compiler, or with PIPEWARDEN_PURE_PYTHON=1 (for a
profiler, which sees into Python code only), everything runs as Python: the same code, slower.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import MutableSequence
from pathlib import Path

__all__ = ["BUILD_DIR", "MODULES", "activate", "manifest", "status"]

MODULES = ("model", "validation", "dedup", "shards", "wire", "ingest")
"""The compiled modules, all of the `core` room (pipewarden.server.core)."""
PACKAGE_DIR = Path(__file__).resolve().parent
"""The sources of the compiled modules."""
BUILD_DIR = PACKAGE_DIR.parent.parent / "build" / "mypyc"
MANIFEST = "manifest.json"
PURE_ENV = "PIPEWARDEN_PURE_PYTHON"

_status = "pure Python: not activated"


def manifest() -> dict[str, object]:
    """What a build of the current sources records: the interpreter and each source's digest."""
    return {
        "python": sys.implementation.cache_tag,
        "sources": {name: _digest(PACKAGE_DIR / f"{name}.py") for name in MODULES},
    }


def activate(package_path: MutableSequence[str], build_dir: Path = BUILD_DIR) -> str:
    """Put the compiled modules ahead of the sources in the `server` package's `__path__` when
    a build of exactly these sources is in `build_dir`; return what runs (see `status`)."""
    global _status
    _status = _activate(package_path, build_dir)
    return _status


def status() -> str:
    """What runs: "compiled with mypyc", or "pure Python: <why>"."""
    return _status


def _activate(package_path: MutableSequence[str], build_dir: Path) -> str:
    if os.environ.get(PURE_ENV):
        return f"pure Python: {PURE_ENV} is set"
    try:
        built = json.loads((build_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return "pure Python: no compiled build (make compiles one where a C compiler is)"
    if built != manifest():
        return "pure Python: the compiled build is of other sources or another Python (make)"
    # The modules' shared library is a top-level module of the build directory.
    sys.path.append(str(build_dir))
    package_path.insert(0, str(build_dir / "pipewarden" / "server" / "core"))
    return "compiled with mypyc"


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""
