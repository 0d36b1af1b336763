"""Generate the Python code for the protos: messages, gRPC stubs and .pyi type stubs.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: the repository root)

The generated files are committed; tests/test_protos.py regenerates them into a temporary
directory and fails when the committed copy differs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def proto_files() -> list[Path]:
    """Every .proto file under protos/, in a stable order."""
    return sorted(PROTOS.rglob("*.proto"))


def generate(out: Path) -> None:
    """Generate code for every proto into `out`, which mirrors the proto package layout."""
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTOS)) for p in proto_files()),
    ]
    # The mypy plugins are console scripts beside this interpreter.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    # protoc resolves the file arguments against the include path.
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit status {code}")
    for package in {p.parent.relative_to(PROTOS) for p in proto_files()}:
        for part in [package, *package.parents]:
            init = out / part / "__init__.py"
            # pipewarden/__init__.py itself is hand-written.
            if len(part.parts) >= 2 and not init.exists():
                init.write_text('"""Generated protobuf code; do not edit. See protos/."""\n')


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
