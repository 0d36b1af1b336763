"""The body of a POST to /api/v1/lineage: from bytes to a JSON document fit to be read.

Everything here runs before the event is looked at, and answers bad input with an error that
the endpoint turns into 400 (or 413): a body that does not inflate or decode, JSON nested
deeper than MAX_DEPTH, and text that is not Unicode text (a lone UTF-16 surrogate, which JSON's
`\\ud800` escape can smuggle in and which no UTF-8 store, protobuf included, can hold).
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

from pipewarden.server.base.errors import TooLarge
from pipewarden.server.openlineage.mapping import BadEventError

__all__ = ["MAX_DEPTH", "BodyTooLargeError", "decode"]

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays accepted in an event. OpenLineage's own facets nest a
few levels (a schema facet's fields, perhaps a dozen); deeper is refused, before anything that
walks the document could run out of stack."""

_GZIP_MAGIC = b"\x1f\x8b"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON escape of a UTF-16 surrogate: only a body with one can decode to a lone surrogate
(JSON in UTF-8 or UTF-16 cannot hold one otherwise: their decoders refuse it)."""


class BodyTooLargeError(TooLarge):
    """The body inflates to more than the limit (answered 413)."""


def decode(body: bytes, limit: int) -> Any:
    """The JSON document of a body, checked (see the module's docstring). aiohttp already
    inflates a body sent with `Content-Encoding: gzip`; one gzipped without saying so is
    inflated here, within `limit`."""
    if body[:2] == _GZIP_MAGIC:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as e:
            raise BadEventError(f"the body looks gzip-encoded but does not inflate: {e}") from e
        if len(body) > limit:
            raise BodyTooLargeError(f"the event is larger than {limit} bytes")
    try:
        text = body.decode(json.detect_encoding(body))
        doc = json.loads(text)
    except RecursionError as e:
        raise BadEventError(f"the body nests deeper than {MAX_DEPTH} levels") from e
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError among them
        raise BadEventError(f"the body is not JSON: {e}") from e
    check_text_and_depth(doc, text=_SURROGATE_ESCAPE.search(text) is not None)
    return doc


def check_text_and_depth(doc: Any, *, text: bool = True) -> None:
    """Raise BadEventError when `doc` nests deeper than MAX_DEPTH or (with `text`) holds a
    string, key or value, that is not valid Unicode text. Walks without recursion."""
    if not text:
        _check_depth(doc)
        return
    stack: list[tuple[Any, int, str]] = [(doc, 1, "the body")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise BadEventError(f"the body nests deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key, f"a key in {where}")
                    stack.append((item, depth + 1, _path(where, key)))
            else:
                stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))


def _check_depth(doc: Any) -> None:
    """The depth check alone, visiting containers only."""
    level: list[Any] = [doc] if isinstance(doc, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise BadEventError(f"the body nests deeper than {MAX_DEPTH} levels")
        below: list[Any] = []
        for value in level:
            items = value.values() if isinstance(value, dict) else value
            below.extend(v for v in items if isinstance(v, dict | list))
        level = below


def _path(where: str, key: str) -> str:
    return key[:64] if where == "the body" else f"{where}.{key[:64]}"


def _check_text(value: str, where: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError as e:
        raise BadEventError(
            f"{where} holds {value[e.start]!r} at {e.start}: not Unicode text (a lone surrogate)"
        ) from e
