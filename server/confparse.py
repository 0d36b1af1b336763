"""Checks shared by every part of the configuration (server/config.py, notifiers/config.py):
each returns the value with its type, or raises a ConfigError that names the key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.errors import ConfigError

__all__ = ["mapping", "number", "string", "whole"]


def mapping(value: Any, key: str, allowed: set[str] | None) -> Mapping[str, Any]:
    """A mapping with string keys, all of them in `allowed` (any, when None)."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(key, f"key {k!r} is not a string")
        if allowed is not None and k not in allowed:
            where = f"{key}.{k}" if key != "(top level)" else k
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(allowed))})")
    return value


def string(value: Any, key: str, *, allow_empty: bool = False) -> str:
    """A string, present, and not empty unless `allow_empty`."""
    if value is None:
        raise ConfigError(key, "missing")
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ConfigError(key, "must not be empty")
    return value


def whole(value: Any, key: str, *, minimum: int) -> int:
    """A whole number (not a boolean) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"{value} is less than {minimum}")
    return value


def number(value: Any, key: str, *, minimum: float) -> float:
    """A number (not a boolean) of at least `minimum`, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"{value} is less than {minimum}")
    return float(value)
