"""TLS and mutual TLS with certificates made at test time, the refusal to serve an open server
beyond loopback, and how tokens are configured."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ssl
import subprocess
from pathlib import Path

import aiohttp
import grpc
import pytest
import trustme

from pipewarden.client import Client, execution, tls_credentials
from pipewarden.server.api.auth import Authenticator, AuthToken, is_loopback
from pipewarden.server.api.tls import TLSConfig
from pipewarden.server.app import App
from pipewarden.server.base.errors import ConfigError
from pipewarden.server.config import Config, ServerConfig, check_exposure, parse
from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.config import make_config
from tests.support.process import BIN, free_port


@dataclasses.dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, clients, strangers = trustme.CA(), trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = clients.issue_cert("client.example")
    stranger = strangers.issue_cert("client.example")
    paths = {}
    for name, blob in {
        "ca": ca.cert_pem,
        "cert": server.cert_chain_pems[0],
        "key": server.private_key_pem,
        "client_ca": clients.cert_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
        "stranger_cert": stranger.cert_chain_pems[0],
        "stranger_key": stranger.private_key_pem,
    }.items():
        paths[name] = d / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    return Pki(**paths)


def _tls_config(tmp_path: Path, pki: Pki, *, mutual: bool) -> Config:
    tls = TLSConfig(str(pki.cert), str(pki.key), str(pki.client_ca) if mutual else "")
    return make_config(tmp_path, tls=tls)


async def _ingest_over(port: int, creds: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        stub = service_pb2_grpc.PipelineMonitorStub(ch)
        r = await stub.Ingest(
            service_pb2.IngestRequest(executions=[execution("e1", "p", "t", "succeeded")]),
            timeout=5,
        )
        return r.accepted


async def test_tls_on_both_ports(tmp_path: Path, pki: Pki) -> None:
    app = App(_tls_config(tmp_path, pki, mutual=False))
    await app.start()
    try:
        assert await _ingest_over(app.grpc_port, tls_credentials(str(pki.ca))) == 1  # type: ignore[arg-type]
        # A plaintext client gets nowhere.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await service_pb2_grpc.PipelineMonitorStub(ch).ListTeamMetrics(
                    service_pb2.ListTeamMetricsRequest(), timeout=2
                )
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert app.http is not None
        context = ssl.create_default_context(cafile=str(pki.ca))
        url = f"https://127.0.0.1:{app.http.port}/healthz"
        async with aiohttp.ClientSession() as http, http.get(url, ssl=context) as r:
            assert r.status == 200
    finally:
        await app.close()


async def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(
    tmp_path: Path, pki: Pki
) -> None:
    app = App(_tls_config(tmp_path, pki, mutual=True))
    await app.start()
    try:
        good = tls_credentials(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        assert good is not None
        assert await _ingest_over(app.grpc_port, good) == 1
        for creds in (
            tls_credentials(str(pki.ca)),  # no client certificate
            tls_credentials(str(pki.ca), str(pki.stranger_cert), str(pki.stranger_key)),
        ):
            assert creds is not None
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _ingest_over(app.grpc_port, creds)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert app.http is not None
        url = f"https://127.0.0.1:{app.http.port}/healthz"
        with_cert = ssl.create_default_context(cafile=str(pki.ca))
        with_cert.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        without = ssl.create_default_context(cafile=str(pki.ca))
        async with aiohttp.ClientSession() as http:
            async with http.get(url, ssl=with_cert) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with http.get(url, ssl=without) as r:
                    await r.read()
    finally:
        await app.close()


async def test_the_cli_and_client_speak_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    app = App(_tls_config(tmp_path, pki, mutual=True))
    await app.start()
    try:
        target = f"127.0.0.1:{app.grpc_port}"
        creds = tls_credentials(str(pki.ca), str(pki.client_cert), str(pki.client_key))

        def ingest() -> int:
            with Client(target, credentials=creds) as pw:
                return pw.ingest([execution("e1", "p", "t", "succeeded")]).accepted

        assert await asyncio.to_thread(ingest) == 1
        proc = await asyncio.create_subprocess_exec(
            str(BIN), "teams", "--target", target, "--json", "--tls-ca", str(pki.ca),
            "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, errors = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, errors
        assert '"t"' in out.decode()
    finally:
        await app.close()


@pytest.mark.parametrize(
    ("listen", "http_listen", "tokens", "insecure", "refused"),
    [
        ("127.0.0.1:1", "127.0.0.1:2", False, False, False),
        ("[::1]:1", "localhost:2", False, False, False),
        ("0.0.0.0:1", "127.0.0.1:2", False, False, True),
        ("127.0.0.1:1", "0.0.0.0:2", False, False, True),
        ("127.0.0.1:1", "", False, False, False),
        ("0.0.0.0:1", "0.0.0.0:2", True, False, False),
        ("0.0.0.0:1", "0.0.0.0:2", False, True, False),
    ],
)
def test_exposure_rule(
    listen: str, http_listen: str, tokens: bool, insecure: bool, refused: bool
) -> None:
    config = Config(
        server=ServerConfig(listen=listen, http_listen=http_listen),
        tokens=(AuthToken("x", None, "admin"),) if tokens else (),
    )
    assert (check_exposure(config, insecure) is not None) == refused
    assert is_loopback("127.0.0.2") and not is_loopback("example.com")


def test_serve_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    port = free_port()
    command = [str(BIN), "serve", "--listen", f"0.0.0.0:{port}", "--http-listen", "",
               "--data-dir", str(tmp_path / "data")]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "not a loopback address" in out.stderr and "--insecure" in out.stderr


def test_tokens_by_value_digest_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW_TEST_TOKEN", "from-env")
    digest = hashlib.sha256(b"by-digest").hexdigest()
    config = parse(
        {
            "auth": {
                "tokens": [
                    {"token": "plain", "team": "a", "role": "reader"},
                    {"sha256": digest.upper(), "team": "a", "role": "writer"},
                    {"token_env": "PW_TEST_TOKEN", "role": "admin"},
                ]
            }
        }
    )
    auth = Authenticator(config.tokens)
    roles = {t: auth.authenticate(f"Bearer {t}") for t in ("plain", "by-digest", "from-env")}
    assert [getattr(p, "role", p) for p in roles.values()] == ["reader", "writer", "admin"]
    assert auth.authenticate("Bearer nope") == "unknown token"
    assert auth.authenticate("Basic abc").startswith("malformed")
    assert auth.authenticate(None).startswith("missing")
    for bad, key in (
        ({"token_env": "PW_TEST_UNSET_VARIABLE", "role": "admin"}, "token_env"),
        ({"sha256": "abc", "role": "admin"}, "sha256"),
        ({"token": "a", "sha256": digest, "role": "admin"}, "auth.tokens[0]"),
    ):
        with pytest.raises(ConfigError) as e:
            parse({"auth": {"tokens": [bad]}})
        assert key in str(e.value)
    with pytest.raises(ConfigError, match=r"auth\.tokens\[1\]: the same token as"):
        parse(
            {
                "auth": {
                    "tokens": [
                        {"token": "by-digest", "role": "admin"},
                        {"sha256": digest, "team": "a", "role": "reader"},
                    ]
                }
            }
        )


def test_limit_keys_parse() -> None:
    sc = parse(
        {
            "server": {
                "rate_limit_per_second": 5,
                "rate_limit_burst": 10,
                "max_streams": 3,
                "limits": {"max_pipelines_per_team": 7},
            }
        }
    ).server
    assert (sc.rate_limit_per_second, sc.rate_limit_burst, sc.max_streams) == (5, 10, 3)
    assert sc.limits.max_pipelines_per_team == 7
    with pytest.raises(ConfigError, match=r"server\.max_streams"):
        parse({"server": {"max_streams": 0}})
    with pytest.raises(ConfigError, match=r"server\.max_streams_per_caller"):
        parse({"server": {"max_streams_per_caller": 0}})
    with pytest.raises(ConfigError, match=r"server\.handshake_timeout_seconds"):
        parse({"server": {"handshake_timeout_seconds": 0}})


def test_tls_config_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"server": {"tls": {"cert": str(tmp_path / "nope.pem"), "key": "k"}}})
    assert "server.tls.cert" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse({"server": {"tls": {"cert": __file__}}})
    assert "server.tls.key" in str(e.value)
