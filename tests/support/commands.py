"""The `pipewarden` command as the tests run it, and configurations they start it with."""

from __future__ import annotations

import subprocess

from tests.support.process import BIN

__all__ = ["ONLY_STREAKS", "pw"]


def pw(
    *args: str, stdin: str | None = None, columns: str = "200"
) -> subprocess.CompletedProcess[str]:
    """Run the command on a terminal `columns` wide."""
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        env={"COLUMNS": columns, "PATH": "/usr/bin:/bin"},
    )


ONLY_STREAKS = """
detection:
  peer: {enabled: false}
  duration_regression: {enabled: false}
  volume_drop: {enabled: false}
  staleness: {enabled: false}
  stuck_run: {enabled: false}
"""
