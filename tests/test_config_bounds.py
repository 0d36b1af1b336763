"""Every number in the configuration has bounds the server can live with, and every file it
names is read and checked when the configuration is: a mistake is a ConfigError naming the key,
never a traceback or a spinning core at run time. The tables are built from the dataclasses, so
a key added later is checked too."""

from __future__ import annotations

import dataclasses
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from pipewarden.notifiers.config import Delivery
from pipewarden.server.base.errors import ConfigError
from pipewarden.server.config import Config, parse
from tests.support.process import BIN

INT32_MAX = 2**31 - 1  # gRPC's options are int32


def _numbers(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, default) of every int or float key under a settings dataclass."""
    for f in dataclasses.fields(value):
        if not f.init:
            continue
        default = getattr(value, f.name)
        if dataclasses.is_dataclass(default):
            yield from _numbers(default, (*path, f.name))
        elif isinstance(default, int | float) and not isinstance(default, bool):
            yield (*path, f.name), default


def _doc(path: tuple[str, ...], value: Any) -> Any:
    if path[0] == "receivers":  # a receiver's delivery keys sit beside its own
        return {
            "receivers": [{"name": "chat", "type": "webhook", "url": "https://x", path[1]: value}]
        }
    doc: Any = value
    for part in reversed(path):
        doc = {part: doc}
    return doc


def _key(path: tuple[str, ...]) -> str:
    return f"receivers[0].{path[1]}" if path[0] == "receivers" else ".".join(path)


KEYS = [
    *_numbers(Config(), ()),
    *((("receivers", name), default) for (name,), default in _numbers(Delivery(), ())),
]
FLOATS = [path for path, default in KEYS if isinstance(default, float)]
INTS = [path for path, default in KEYS if isinstance(default, int)]
OTHER_MAXIMA = {("server", "snapshot_log_bytes"): 1 << 53, ("server", "wal_segment_bytes"): 1 << 30}


def test_the_tables_cover_the_keys_the_issue_named() -> None:
    assert ("server", "fsync_interval_seconds") in FLOATS
    assert ("server", "limits", "max_request_bytes") in INTS
    assert ("detection", "peer", "success_rate", "k") in FLOATS
    assert ("receivers", "timeout_seconds") in FLOATS
    assert len(FLOATS) > 30 and len(INTS) > 20


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", FLOATS, ids=_key)
def test_no_float_key_takes_nan_or_infinity(path: tuple[str, ...], bad: float) -> None:
    with pytest.raises(ConfigError) as info:
        parse(_doc(path, bad))
    assert info.value.key == _key(path)


@pytest.mark.parametrize("path", INTS, ids=_key)
def test_every_whole_number_key_has_a_maximum(path: tuple[str, ...]) -> None:
    limit = OTHER_MAXIMA.get(path, INT32_MAX)
    with pytest.raises(ConfigError) as info:
        parse(_doc(path, limit + 1))
    assert info.value.key == _key(path)
    assert f"is more than {limit}" in str(info.value)


BAD: list[tuple[Any, str]] = [
    (
        {"server": {"limits": {"max_request_bytes": 99999999999}}},
        "server.limits.max_request_bytes: 99999999999 is more than 2147483647",
    ),
    ({"server": {"fsync_interval_seconds": 0}}, "server.fsync_interval_seconds: 0 is less than"),
    ({"server": {"fsync_interval_seconds": ".1"}}, "server.fsync_interval_seconds: expected a"),
    ({"server": {"wal_segment_bytes": 100}}, "server.wal_segment_bytes: 100 is less than 4096"),
    ({"server": {"shutdown_grace_seconds": 1e300}}, "server.shutdown_grace_seconds: 1e+300 is"),
    ({"server": {"rate_limit_per_second": 10**400}}, "server.rate_limit_per_second: 1000"),
]


@pytest.mark.parametrize(("doc", "message"), BAD, ids=[m for _, m in BAD])
def test_out_of_range_values_name_the_key(doc: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(doc)
    assert message in str(info.value)


def test_the_bounds_leave_the_values_in_use_alone() -> None:
    config = parse(
        {
            "server": {
                "fsync_interval_seconds": 0.001,
                "wal_segment_bytes": 4096,
                "snapshot_log_bytes": 1 << 50,  # the benchmarks' "never"
                "limits": {"max_request_bytes": INT32_MAX},
                "snapshot_interval_seconds": 0,
            }
        }
    )
    assert config.server.limits.max_request_bytes == INT32_MAX


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pem")
    ca, other = trustme.CA(), trustme.CA()
    server, stranger = ca.issue_cert("127.0.0.1"), other.issue_cert("127.0.0.1")
    files = {
        "cert": server.cert_chain_pems[0].bytes(),
        "key": server.private_key_pem.bytes(),
        "ca": ca.cert_pem.bytes(),
        "stranger_key": stranger.private_key_pem.bytes(),
        "der": b"0\x82\x01\x0a" + b"\x01" * 200,  # DER, or anything that is not PEM
        "key_as_cert": server.private_key_pem.bytes(),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = d / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


TLS_BAD: list[tuple[dict[str, str], str, str]] = [
    ({"cert": "der", "key": "key"}, "server.tls.cert", "is not a PEM certificate"),
    ({"cert": "key_as_cert", "key": "key"}, "server.tls.cert", "is not a PEM certificate"),
    ({"cert": "cert", "key": "der"}, "server.tls.key", "is not a PEM private key"),
    ({"cert": "cert", "key": "cert"}, "server.tls.key", "is not a PEM private key"),
    ({"cert": "cert", "key": "stranger_key"}, "server.tls.key", "do not load as a pair"),
    ({"cert": "cert", "key": "key", "client_ca": "der"}, "server.tls.client_ca", "not a PEM"),
]


@pytest.mark.parametrize(
    ("files", "key", "says"), TLS_BAD, ids=[f"{k}: {s}" for _, k, s in TLS_BAD]
)
def test_tls_files_are_checked_when_the_configuration_is_read(
    pem: dict[str, Path], files: dict[str, str], key: str, says: str
) -> None:
    tls = {k: str(pem[v]) for k, v in files.items()}
    with pytest.raises(ConfigError) as info:
        parse({"server": {"tls": tls}})
    assert info.value.key == key and says in str(info.value)


def test_good_tls_files_pass(pem: dict[str, Path]) -> None:
    tls = {"cert": str(pem["cert"]), "key": str(pem["key"]), "client_ca": str(pem["ca"])}
    assert parse({"server": {"tls": tls}}).server.tls is not None


def test_serve_names_the_key_instead_of_a_traceback(tmp_path: Path, pem: dict[str, Path]) -> None:
    for text, key in [
        ("server: {limits: {max_request_bytes: 99999999999}}\n", "server.limits.max_request_bytes"),
        ("server: {fsync: interval, fsync_interval_seconds: .nan}\n", "server.fsync_interval"),
        (f"server: {{tls: {{cert: '{pem['der']}', key: '{pem['key']}'}}}}\n", "server.tls.cert"),
    ]:
        config = tmp_path / "bad.yaml"
        config.write_text(text)
        out = subprocess.run(
            [str(BIN), "serve", "--config", str(config), "--data-dir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 2, out.stderr
        assert key in out.stderr and "Traceback" not in out.stderr, out.stderr
