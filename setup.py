"""The wheel, with the hot path compiled by mypyc where it can be (as black and mypy ship theirs).

Everything about the project is in pyproject.toml; this file adds one step to `build_ext`: the
modules of the hot path (`pipewarden.server.core`, the names that server/core/compiled.py
lists) are compiled with mypyc into extension modules that sit beside their
sources and win the import. Where that cannot be done (no working C compiler, mypyc missing, or
PIPEWARDEN_PURE_PYTHON set) the wheel is pure Python, and the build says why in one line starting
"pipewarden: hot path". The reason is also kept in the package (`hot_path.json`), so that the
server's start line can say it. An editable install (`make dev`) compiles nothing: `make`
compiles the hot path into build/mypyc/, where an edited source is never shadowed by a stale build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import tempfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.dist import Distribution

PACKAGE = "pipewarden/server/core"
"""Through the pipewarden/server link, so that mypyc names the modules pipewarden.server.core.*"""


def _compiled() -> ModuleType:
    """server/core/compiled.py, which says what is compiled and how a build is recorded, read
    alone: it needs the standard library only, and the build has none of our dependencies."""
    spec = importlib.util.spec_from_file_location("_pipewarden_compiled", f"{PACKAGE}/compiled.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_COMPILED = _compiled()
HOT_PATH: tuple[str, ...] = _COMPILED.MODULES
"""The modules of pipewarden.server.core to compile."""
RECORD: str = _COMPILED.RECORD
"""Written beside the modules in a pure-Python build: why it is one."""
PURE_ENV: str = _COMPILED.PURE_ENV


class HotPathDistribution(Distribution):
    """A distribution that has extension modules until the build finds it cannot make them
    (then the wheel is pure Python, tagged py3-none-any)."""

    compiling = True

    def has_ext_modules(self) -> bool:
        return self.compiling


class BuildHotPath(build_ext):
    """build_ext that compiles the hot path with mypyc, or says why it does not."""

    def run(self) -> None:
        why = self._why_not()
        if why is None:
            try:
                # Set up again with the extensions, which exist only now.
                self.distribution.ext_modules = self._mypycify()
                self.initialize_options()
                self.finalize_options()
                super().run()
            except (Exception, SystemExit) as e:  # mypyc exits on a type error: pure Python
                why = f"the build failed ({type(e).__name__}: {_first_line(e)})"
                self._remove_outputs()
        if why is None:
            print(f"pipewarden: hot path compiled with mypyc ({', '.join(HOT_PATH)})")
            return
        print(f"pipewarden: hot path pure Python: {why}", file=sys.stderr)
        self._pure_python(why)

    def _why_not(self) -> str | None:
        """Why the hot path cannot be compiled here, before trying; None when it can be."""
        if self.editable_mode:
            return "an editable install (make compiles the hot path into build/mypyc/)"
        if os.environ.get(PURE_ENV):
            return f"{PURE_ENV} was set when it was built"
        try:
            import mypyc.build  # noqa: F401
        except ImportError:
            return "mypyc was not installed when it was built (pip install mypy)"
        return _no_c_compiler()

    def _mypycify(self) -> list[Any]:
        from mypyc.build import mypycify

        temp = Path(self.build_temp)
        sources = [f"{PACKAGE}/{name}.py" for name in HOT_PATH]
        # Module names from this directory down, even when it lies inside another package (a
        # tree under bench/out/, say). Most runtime dependencies are not installed in an
        # isolated build: mypy sees them as Any, which changes no compiled module (they call
        # into them as into any Python object); what the hot path calls directly is in the build
        # requirements (pyproject.toml), so the C is the same as `make` compiles in a development
        # tree. mypy's cache and the C in the build's temporary directory.
        options = [
            "--explicit-package-bases",
            "--ignore-missing-imports",
            "--cache-dir",
            str(temp / "mypy-cache"),
        ]
        extensions: list[Any] = mypycify(
            options + sources, opt_level="3", target_dir=str(temp / "mypyc")
        )
        return extensions

    def _remove_outputs(self) -> None:
        for extension in self.distribution.ext_modules or []:
            Path(self.get_ext_fullpath(extension.name)).unlink(missing_ok=True)
        self.distribution.ext_modules = self.extensions = []

    def _pure_python(self, why: str) -> None:
        distribution = self.distribution
        assert isinstance(distribution, HotPathDistribution)
        distribution.compiling = False
        wheel = distribution.command_obj.get("bdist_wheel")
        if wheel is not None:
            wheel.root_is_pure = True
        if not self.editable_mode:
            # An earlier build's extension modules in the same build directory would win over
            # the sources: not in a pure-Python wheel.
            for suffix in EXTENSION_SUFFIXES:
                for stale in [
                    *Path(self.build_lib).glob(f"*__mypyc{suffix}"),
                    *(Path(self.build_lib, PACKAGE, name + suffix) for name in HOT_PATH),
                ]:
                    stale.unlink(missing_ok=True)
            record = Path(self.build_lib, PACKAGE, RECORD)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"compiled": False, "why": why}) + "\n")


def _no_c_compiler() -> str | None:
    """Why the C compiler that build_ext would use cannot build an extension; None when it can."""
    from setuptools._distutils import ccompiler, sysconfig

    compiler: Any = ccompiler.new_compiler()
    sysconfig.customize_compiler(compiler)
    with tempfile.TemporaryDirectory(prefix="pipewarden-cc-") as tmp:
        probe = Path(tmp, "probe.c")
        probe.write_text("#include <Python.h>\nint pipewarden_probe(void) { return 0; }\n")
        try:
            compiler.compile(
                [str(probe)], output_dir=tmp, include_dirs=[sysconfig.get_python_inc()]
            )
        except Exception as e:  # distutils' errors, of whichever copy of distutils is in use
            cc = os.environ.get("CC") or compiler.compiler_so[0]
            # distutils names the whole command line; the compiler and the outcome say enough.
            outcome = re.sub(r"^Command '\[.*\]' ", "", _first_line(e)).rstrip(".")
            return f"no working C compiler ({cc}: {outcome})"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


setup(distclass=HotPathDistribution, cmdclass={"build_ext": BuildHotPath})
