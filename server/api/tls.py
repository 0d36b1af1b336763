"""TLS for the two ports, from `server.tls`: the certificate and key, and with `client_ca` a
client certificate required (mutual TLS). The files are checked when the configuration is read
(`check_files`), so that a wrong one is named by its key rather than found by a failing bind."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from pipewarden.server.base.errors import ConfigError


@dataclass(frozen=True)
class TLSConfig:
    """TLS for the gRPC and HTTP ports (`server.tls`)."""

    cert: str
    """PEM file of the server's certificate chain."""
    key: str
    """PEM file of the server's private key."""
    client_ca: str = ""
    """PEM file of the CA that signs client certificates; set, clients must present one
    (mutual TLS)."""


__all__ = ["TLSConfig", "check_files", "grpc_credentials", "http_context"]

_PEM = {
    "cert": (b"-----BEGIN CERTIFICATE-----", "a PEM certificate"),
    "key": (b"PRIVATE KEY-----", "a PEM private key"),
    "client_ca": (b"-----BEGIN CERTIFICATE-----", "a PEM certificate"),
}


def check_files(tls: TLSConfig, key: str) -> None:
    """Read each file and check that it is what its key says (ConfigError naming the key when
    not): PEM, a key that belongs to the certificate, CA certificates that load."""
    for name, (marker, what) in _PEM.items():
        path = getattr(tls, name)
        if not path:
            continue
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"{key}.{name}", f"cannot read {path!r}: {e.strerror}") from e
        if b"-----BEGIN " not in data or marker not in data:
            raise ConfigError(f"{key}.{name}", f"{path!r} is not {what}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key, password=lambda: b"")  # never prompt
    except ssl.SSLError as e:
        raise ConfigError(
            f"{key}.key", f"{tls.key!r} and {tls.cert!r} do not load as a pair: {e.reason or e}"
        ) from e
    if tls.client_ca:
        try:
            context.load_verify_locations(tls.client_ca)
        except ssl.SSLError as e:
            raise ConfigError(
                f"{key}.client_ca", f"{tls.client_ca!r} does not load: {e.reason or e}"
            ) from e


def grpc_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`."""
    key, cert = Path(tls.key).read_bytes(), Path(tls.cert).read_bytes()
    ca = Path(tls.client_ca).read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def http_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server context for the HTTP port (TLS 1.2 at least)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca:
        context.load_verify_locations(tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
