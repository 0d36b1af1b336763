"""Compile the hot path with mypyc into build/mypyc/ (see server/core/compiled.py).

Usage: python scripts/compile.py

Writes the manifest last, so that an interrupted build is never used. Exits non-zero when the
build fails (no C compiler, say); the server then runs as pure Python.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PIPEWARDEN_PURE_PYTHON"] = "1"  # this process reads the sources, not a build

from pipewarden.server.core import compiled  # noqa: E402


def main() -> int:
    from mypyc.build import mypycify
    from setuptools import setup

    out = compiled.BUILD_DIR
    shutil.rmtree(out, ignore_errors=True)
    built = compiled.manifest()  # of the sources as they are read now, before the build
    sources = [f"pipewarden/server/core/{name}.py" for name in compiled.MODULES]
    with tempfile.TemporaryDirectory(prefix="pipewarden-mypyc-") as tmp:
        os.chdir(ROOT)
        extensions = mypycify(sources, opt_level="3", target_dir=str(Path(tmp) / "c"))
        setup(
            name="pipewarden-compiled",
            ext_modules=extensions,
            script_args=[
                "--quiet",
                "build_ext",
                "--build-lib",
                str(out),
                "--build-temp",
                str(Path(tmp) / "o"),
            ],
        )
    if compiled.manifest() != built:
        print("a source changed during the build: not using it (run make again)", file=sys.stderr)
        return 1
    (out / compiled.MANIFEST).write_text(json.dumps(built, indent=2) + "\n")
    print(f"compiled {', '.join(sources)} into {out.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
