"""TLS for the two ports, from `server.tls`: the certificate and key, and with `client_ca` a
client certificate required (mutual TLS)."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from server.config import TLSConfig

__all__ = ["grpc_credentials", "http_context"]


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
