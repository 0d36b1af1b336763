"""Who is calling, and what they may see and do.

A bearer token (`authorization: Bearer …` in gRPC metadata or an HTTP header) names a principal:
a team and a role. Roles:

- reader: reads its own team (pipelines, team totals, anomalies, alerts, silences, history).
- writer: what a reader may, and ingests its own team's executions (another team's rows are
  rejected), acknowledges its own team's alerts, and creates and ends silences of its own team.
- admin: everything, for every team (a silence with no team, which matches every team, too).

Tokens are kept only as SHA-256 digests, and a presented token is compared with every
configured digest by `hmac.compare_digest`, so the time taken does not depend on how much of a
token matched. With no tokens configured there is no authentication: every caller is an
unrestricted principal, and the server listens on loopback only (see `check_exposure`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AuthToken:
    """A bearer token and what it may do."""

    token: str
    """The token itself ("" when only its digest is configured)."""
    team: str | None
    """The team it belongs to; None for an admin token of no team."""
    role: str
    """reader, writer or admin."""
    sha256: str = ""
    """The token's SHA-256 in hex, configured instead of the token (`sha256: …`)."""


__all__ = ["ANONYMOUS", "AuthToken", "Authenticator", "Principal", "audit", "is_loopback"]

audit = logging.getLogger("pipewarden.audit")
"""One line for every acknowledgement, silence created or ended, and refused authentication."""

_RANK = {"reader": 1, "writer": 2, "admin": 3}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    team: str | None
    """The team it belongs to; None for an admin of no team, or when there is no auth."""
    role: str
    """reader, writer or admin."""
    key: str
    """What identifies it for rate limits: a prefix of its token's digest, never the token."""

    @property
    def admin(self) -> bool:
        """Whether it may do everything for every team."""
        return self.role == "admin"

    def can_read(self, team: str) -> bool:
        """Whether it may read `team`'s rows."""
        return self.admin or team == self.team

    def can_write(self, team: str) -> bool:
        """Whether it may ingest and handle alerts and silences of `team`."""
        return self.admin or (self.role == "writer" and team == self.team)

    def scope(self, team: str) -> str | None:
        """The team filter a read with filter `team` runs with: `team` itself, the principal's
        own team when `team` is empty, or None when `team` is another team's (refused)."""
        if self.admin:
            return team
        if not team:
            return self.team or ""
        return team if team == self.team else None

    def describe(self) -> str:
        """For log lines: role, team and key, never the token."""
        return f"{self.role}:{self.team or '*'}:{self.key}"


ANONYMOUS = Principal(team=None, role="admin", key="anonymous")
"""Every caller when no tokens are configured."""


def digest(token: str) -> bytes:
    """The SHA-256 of a token, as kept in memory and compared."""
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Maps a presented bearer token to its principal, in constant time."""

    def __init__(self, tokens: Iterable[AuthToken]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for t in tokens:
            d = bytes.fromhex(t.sha256) if t.sha256 else digest(t.token)
            self._entries.append((d, Principal(t.team, t.role, d.hex()[:12])))

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (otherwise everyone is ANONYMOUS)."""
        return bool(self._entries)

    def authenticate(self, header: str | None) -> Principal | str:
        """The principal of an `authorization` header value, or the reason it is refused."""
        if not self._entries:
            return ANONYMOUS
        if not header:
            return "missing authorization: send `authorization: Bearer <token>`"
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "malformed authorization: expected `Bearer <token>`"
        presented = digest(token.strip())
        found: Principal | None = None
        # Compare with every entry, without stopping at a match, so the time says nothing.
        for d, principal in self._entries:
            if hmac.compare_digest(presented, d):
                found = principal
        return found if found is not None else "unknown token"

    def from_metadata(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal | str:
        """The principal of gRPC invocation metadata, or the reason it is refused."""
        for key, value in metadata or ():
            if key == "authorization":
                return self.authenticate(value.decode() if isinstance(value, bytes) else value)
        return self.authenticate(None)


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
