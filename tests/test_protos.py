"""The committed generated code is what the protos generate, and the public API is declared."""

from __future__ import annotations

import filecmp
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    "module",
    [
        "pipewarden.client",
        "pipewarden.cli",
        "server.config",
        "server.shards",
        "server.ingest",
        "server.eventlog",
        "server.detect",
        "server.servicer",
        "server.app",
        "server.validation",
        "server.dedup",
        "server.alerting.book",
        "server.alerting.convert",
        "server.alerting.feed",
        "server.alerting.lineage",
        "server.alerting.manager",
        "server.alerting.model",
        "server.alerting.policy",
        "server.alerting.settings",
        "server.alerting.silences",
        "server.alerting.storage",
        "pipewarden.reporter",
        "pipewarden.runs",
        "server.collector",
        "server.metrics",
        "server.openlineage.endpoint",
        "server.openlineage.mapping",
        "server.openlineage.producers",
        "server.openlineage.settings",
        "server.requestlimits",
        "server.logsafe",
        "server.tasks",
    ],
)
def test_public_names_are_declared_and_exist(module: str) -> None:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    assert names, f"{module} declares no __all__"
    for name in names:
        assert hasattr(mod, name), f"{module}.__all__ names {name}, which does not exist"
