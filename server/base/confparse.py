"""Checks shared by every part of the configuration (server/config.py, notifiers/config.py):
each returns the value with its type, or raises a ConfigError that names the key."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import Any

from pipewarden.server.base.errors import ConfigError

__all__ = ["INT32_MAX", "mapping", "number", "parse_hostport", "string", "whole"]

INT32_MAX = 2**31 - 1
"""The largest whole number a key takes unless it says otherwise: what gRPC's options (int32)
and any count the server keeps can hold."""


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


def whole(value: Any, key: str, *, minimum: int, maximum: int = INT32_MAX) -> int:
    """A whole number (not a boolean) from `minimum` to `maximum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"{value} is less than {minimum}")
    if value > maximum:
        raise ConfigError(key, f"{value} is more than {maximum}")
    return value


def number(value: Any, key: str, *, minimum: float, maximum: float = math.inf) -> float:
    """A finite number (not a boolean) from `minimum` to `maximum`, as a float. NaN and
    infinity (YAML's .nan and .inf) are refused: no key means anything by them."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number, got {value!r}")
    try:
        result = float(value)
    except OverflowError:
        raise ConfigError(key, f"{value} is too large") from None
    if not math.isfinite(result):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    if result < minimum:
        raise ConfigError(key, f"{value} is less than {minimum:g}")
    if result > maximum:
        raise ConfigError(key, f"{value} is more than {maximum:g}")
    return result


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 hosts in brackets), or raise a ConfigError naming `key`."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(key, f"{value!r} is not HOST:PORT")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"{value!r}: the port must be a number from 0 to 65535")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as e:
            raise ConfigError(key, f"{value!r}: an IPv6 host goes in brackets") from e
    return host, int(port)
