"""The committed generated code is what the protos generate, and the public API is declared."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "the generator produced nothing"
    stale = [
        str(rel)
        for rel in generated
        if rel.name != "__init__.py" and not filecmp.cmp(tmp_path / rel, ROOT / rel, shallow=False)
    ]
    assert not stale, f"regenerate with `make proto`; stale: {stale}"
    committed = {
        p.relative_to(ROOT)
        for d in ("pipewarden/v1", "pipewarden/storage/v1")
        for p in (ROOT / d).glob("*_pb2*")
    }
    assert committed == {g for g in generated if g.name != "__init__.py"}
