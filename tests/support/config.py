"""Configurations for servers the tests start in-process."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipewarden.server.config import Config, ServerConfig
from pipewarden.server.core.limits import IngestLimits

__all__ = ["make_config"]


def make_config(tmp_path: Path, **server: Any) -> Config:
    """A configuration listening on free loopback ports with its data under tmp_path."""
    limits = server.pop("limits", IngestLimits())
    sc = ServerConfig(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        data_dir=str(tmp_path / "data"),
        shutdown_grace_seconds=1.0,
        limits=limits,
    )
    return Config(server=dataclasses.replace(sc, **server))
