"""The hot path compiled with mypyc, when a build of the current sources is there.

Every event of every request, and of every replay, passes through a few modules: turning a
message into an Execution (`validation`, `model`), deciding and applying it (`ingest`,
`shards`) and remembering its id (`dedup`). `make` compiles them with mypyc
(`scripts/compile.py`) into `build/mypyc/`, outside the source tree, with a manifest of the
sources' SHA-256 digests. When the `core` package is imported, `activate` puts the compiled
modules ahead of the sources, but only if every digest matches the source beside it and the
build is for this interpreter: an edited source is never shadowed by a stale build, it runs as
Python until the next `make`.

Installed from a wheel (`pip install .`, setup.py), the compiled modules are extension modules
beside their sources, which win the import; a wheel built where they could not be compiled
records why in `hot_path.json` instead. Without a C compiler, or with PIPEWARDEN_PURE_PYTHON=1
(for a profiler, which sees into Python code only), everything runs as Python: the same code,
slower.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import MutableSequence, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, ModuleSpec, PathFinder
from pathlib import Path
from types import ModuleType

__all__ = [
    "BUILD_DIR",
    "COMPILED",
    "MODULES",
    "PURE_ENV",
    "RECORD",
    "activate",
    "manifest",
    "status",
]

MODULES = ("model", "validation", "dedup", "shards", "wire", "ingest")
"""The compiled modules, all of the `core` room (pipewarden.server.core)."""
PACKAGE_DIR = Path(__file__).resolve().parent
"""The sources of the compiled modules."""
BUILD_DIR = PACKAGE_DIR.parent.parent / "build" / "mypyc"
MANIFEST = "manifest.json"
PURE_ENV = "PIPEWARDEN_PURE_PYTHON"
RECORD = "hot_path.json"
"""In a wheel built without the compiled modules, beside the sources: why (setup.py writes it)."""
COMPILED = "compiled with mypyc"

_status = "pure Python: not activated"


def manifest() -> dict[str, object]:
    """What a build of the current sources records: the interpreter and each source's digest."""
    return {
        "python": sys.implementation.cache_tag,
        "sources": {name: _digest(PACKAGE_DIR / f"{name}.py") for name in MODULES},
    }


def activate(package_path: MutableSequence[str], build_dir: Path = BUILD_DIR) -> str:
    """Put the compiled modules ahead of the sources in the `core` package's `__path__` when
    a build of exactly these sources is in `build_dir`; return what will run (see `status`).

    Where the package itself holds them (an installed wheel), they are used as they are."""
    global _status
    _status = _activate(package_path, build_dir)
    return _status


def status() -> str:
    """What runs: "compiled with mypyc", or "pure Python: <why>". Once the modules are imported,
    from where they were loaded (their `__file__`); before, what `activate` arranged."""
    loaded = [sys.modules.get(f"{__package__}.{name}") for name in MODULES]
    if not all(loaded) or _status != COMPILED:
        return _status
    sources = [m.__name__ for m in loaded if m is not None and not _is_extension(m)]
    return f"pure Python: {', '.join(sources)} loaded from source" if sources else COMPILED


def _activate(package_path: MutableSequence[str], build_dir: Path) -> str:
    installed = _installed(package_path)
    if os.environ.get(PURE_ENV):
        if installed:
            sys.meta_path.insert(0, _Sources(package_path))
        return f"pure Python: {PURE_ENV} is set"
    if installed:
        return COMPILED
    for entry in package_path:
        try:
            why = json.loads(Path(entry, RECORD).read_text())["why"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return f"pure Python: installed from a wheel built without it: {why}"
    try:
        built = json.loads((build_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return "pure Python: no compiled build (make compiles one where a C compiler is)"
    if built != manifest():
        return "pure Python: the compiled build is of other sources or another Python (make)"
    # The modules' shared library is a top-level module of the build directory.
    sys.path.append(str(build_dir))
    package_path.insert(0, str(build_dir / "pipewarden" / "server" / "core"))
    return COMPILED


def _installed(package_path: Sequence[str]) -> bool:
    """Whether the import system finds every compiled module as an extension module in the
    package itself: beside the sources, where a wheel puts them."""
    for name in MODULES:
        spec = PathFinder.find_spec(f"{__package__}.{name}", list(package_path))
        if spec is None or not isinstance(spec.loader, ExtensionFileLoader):
            return False
    return True


def _is_extension(module: ModuleType) -> bool:
    return (getattr(module, "__file__", None) or "").endswith(tuple(EXTENSION_SUFFIXES))


class _Sources(MetaPathFinder):
    """Finds the compiled modules' sources ahead of the extension modules beside them, for
    PIPEWARDEN_PURE_PYTHON in an installed wheel."""

    def __init__(self, package_path: Sequence[str]) -> None:
        self._path = list(package_path)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __package__ or name not in MODULES:
            return None
        for entry in self._path:
            source = Path(entry, f"{name}.py")
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""
