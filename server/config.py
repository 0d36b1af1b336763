"""Configuration: typed, frozen, validated once at start.

The YAML file (`pipewarden serve --config`; docs/configuration.md lists every key) is read into
these dataclasses; every key is optional and
unknown keys are errors, so a typo is caught at start rather than silently ignored. Command-line
flags override the file (see `with_overrides`). Every error names the key and what is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipewarden.notifiers.config import Receiver, Route, parse_receivers, parse_routes
from pipewarden.server.alerting.settings import AlertSettings, parse_trusted_teams
from pipewarden.server.api.auth import AuthToken, is_loopback
from pipewarden.server.api.collector import MetricsSettings
from pipewarden.server.api.tls import TLSConfig, check_files
from pipewarden.server.base.confparse import INT32_MAX, parse_hostport
from pipewarden.server.base.confparse import mapping as _mapping
from pipewarden.server.base.confparse import number as _number
from pipewarden.server.base.confparse import string as _str
from pipewarden.server.base.confparse import whole as _int
from pipewarden.server.base.errors import ConfigError
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.detection.settings import DetectionSettings
from pipewarden.server.openlineage.settings import OpenLineageSettings, parse_settings

__all__ = [
    "AlertSettings",
    "Config",
    "Receiver",
    "Route",
    "ServerConfig",
    "check_exposure",
    "load",
    "parse",
]


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens, where it keeps its data, and how its state is laid out."""

    listen: str = "127.0.0.1:50051"
    """gRPC address, HOST:PORT."""
    http_listen: str = "127.0.0.1:9095"
    """HTTP address for /metrics and /healthz, HOST:PORT; empty turns HTTP off."""
    data_dir: str = "./var"
    """Directory of the write-ahead log (wal/) and snapshots (snapshots/)."""
    shards: int = 16
    """How many shards pipelines are spread over (by a stable hash of pipeline_id)."""
    window: int = 64
    """Runs kept per pipeline in its ring buffers of recent runs."""
    max_in_flight_per_stream: int = 64
    """Requests of one StreamIngest stream processed but not yet answered; more wait."""
    max_seen_executions: int = 5_000_000
    """Terminal executions (pipeline and execution id) remembered for duplicate detection. Beyond
    it, the team that holds the most forgets its oldest first, down to the level of the next
    largest: a team is never cut while another holds more, so a flood stays in its own share."""
    dedup_retention_seconds: float = 14 * 86400.0
    """Executions are also forgotten once the server received them this much before the newest
    request (a team's chunk of 4,096 at a time; event times play no part). A resent event
    whose execution was forgotten counts again."""
    fsync: str = "always"
    """When the log calls fdatasync: always (before every answer; loses nothing acknowledged on
    power loss), interval (every fsync_interval_seconds; a power loss may lose that much, a
    process crash nothing), off (never; a crash of the process loses nothing, a power loss or
    kernel crash may lose whatever the OS had not yet written)."""
    fsync_interval_seconds: float = 0.1
    """With fsync: interval, how often the log is synced."""
    wal_segment_bytes: int = 64 * 1024 * 1024
    """Size at which the log starts a new segment."""
    snapshot_interval_seconds: float = 300.0
    """A snapshot is taken this often (0 turns the timer off)..."""
    snapshot_log_bytes: int = 256 * 1024 * 1024
    """...and whenever the log has grown this much since the last one."""
    shutdown_grace_seconds: float = 10.0
    """How long a stop waits for open streams to finish."""
    limits: IngestLimits = field(default_factory=IngestLimits)
    """Request and row size limits."""
    tls: TLSConfig | None = None
    """TLS for both ports; None serves plaintext."""
    rate_limit_per_second: float = 0.0
    """Requests each token may make per second, on average (without auth, all callers share
    one bucket); more get RESOURCE_EXHAUSTED. 0 turns rate limiting off. Each request of a
    StreamIngest stream counts too, and beyond the rate the stream is read more slowly rather
    than ended."""
    rate_limit_burst: int = 200
    """How many requests a token may make at once after being idle (its bucket's size)."""
    max_streams: int = 1000
    """Open StreamIngest and WatchAlerts streams, all callers together; more get
    RESOURCE_EXHAUSTED."""
    max_streams_per_caller: int = 100
    """Open streams of one token (without auth: of one connection); more get
    RESOURCE_EXHAUSTED, so that one caller never takes every place."""
    max_streams_per_team: int = 250
    """Open streams of all the tokens of one team together; more get RESOURCE_EXHAUSTED."""
    ingest_stream_reserve: int = 100
    """Of max_streams, the places only StreamIngest may take (at most half of them): WatchAlerts
    streams are refused once max_streams minus this many are open, so that readers never crowd
    out writers."""
    reserved_descriptors: int = 256
    """File descriptors kept for the log, snapshots, the notifiers' outbox and outgoing
    connections; connections to the gRPC and HTTP ports get what the open-file limit (raised to
    its hard limit at start) leaves beyond them and what the process holds."""
    max_grpc_connections: int = 10_000
    """Connections the gRPC port accepts at once (lowered, with a warning, to what the
    open-file limit leaves); beyond them a new connection is closed at once."""
    max_http_connections: int = 1000
    """Connections the HTTP port accepts at once (lowered likewise); beyond them a new one is
    answered 503 and closed."""
    handshake_timeout_seconds: float = 10.0
    """A gRPC connection must finish its HTTP/2 (and TLS) handshake this soon after opening;
    an HTTP connection must send a whole request's headers this soon after opening and after
    each answer. Otherwise it is closed."""
    connection_idle_seconds: float = 300.0
    """A gRPC connection without an open call for this long is closed (clients reconnect when
    they next call)."""
    http_body_timeout_seconds: float = 30.0
    """An HTTP request's body must arrive whole this soon after its headers; otherwise the
    answer is 408 and the connection is closed."""
    http_body_buffer_bytes: int = 64 * 1024 * 1024
    """Bytes of HTTP request bodies read and held at once, all requests together (at least
    limits.max_request_bytes); beyond it a request is answered 503 with Retry-After."""
    ingest_queue_bytes: int = 64 * 1024 * 1024
    """Ingest requests are applied one at a time, so that reads stay quick under any ingest
    load; this bounds the bytes of those waiting their turn. A unary Ingest beyond it gets
    RESOURCE_EXHAUSTED (retry shortly); a stream's next request is not read until its turn."""


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    """Listening addresses, data directory and state layout."""
    receivers: tuple[Receiver, ...] = ()
    """Notification receivers (see notifiers/config.py)."""
    routes: tuple[Route, ...] = ()
    """Alert routes, first match wins."""
    tokens: tuple[AuthToken, ...] = ()
    """Bearer tokens; none means no authentication (loopback only)."""
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    """Anomaly detectors and their thresholds."""
    alerts: AlertSettings = field(default_factory=AlertSettings)
    """The alert lifecycle: resolution, escalation, repeats, history, blast radius."""
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    """What /metrics shows (the cap on per-pipeline series)."""
    openlineage: OpenLineageSettings = field(default_factory=OpenLineageSettings)
    """How OpenLineage jobs get their team and upstream pipelines."""

    def with_overrides(self, **server_keys: Any) -> Config:
        """A copy with the given `server:` keys replaced (those whose value is not None)."""
        changes = {k: v for k, v in server_keys.items() if v is not None}
        if not changes:
            return self
        merged = {f.name: getattr(self.server, f.name) for f in dataclasses.fields(self.server)}
        merged.update(changes)
        return dataclasses.replace(self, server=_server(merged, "server"))


ROLES = ("reader", "writer", "admin")


def load(path: str | Path | None) -> Config:
    """Read and validate the YAML file at `path`; no path gives the defaults."""
    if path is None:
        return Config()
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(str(path), f"cannot read the file: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"not valid YAML: {e}") from e
    return parse(data if data is not None else {})


def parse(data: Any) -> Config:
    """Validate a decoded configuration document."""
    doc = _mapping(
        data,
        "(top level)",
        {"server", "receivers", "routes", "auth", "detection", "alerts", "metrics", "openlineage"},
    )
    server = _server(_mapping(doc.get("server", {}), "server", None), "server")
    receivers = parse_receivers(doc.get("receivers"), "receivers")
    routes = parse_routes(doc.get("routes"), [r.name for r in receivers], "routes")
    auth = _mapping(doc.get("auth", {}), "auth", {"tokens"})
    tokens = tuple(
        _token(item, f"auth.tokens[{i}]") for i, item in enumerate(_list(auth, "tokens"))
    )
    _check_unique(tokens)
    detection = _settings(DetectionSettings(), doc.get("detection", {}), "detection")
    _check_detection(detection)
    alerts = _settings(AlertSettings(), doc.get("alerts", {}), "alerts")
    _check_alerts(alerts)
    return Config(
        server=server,
        receivers=receivers,
        routes=routes,
        tokens=tokens,
        detection=detection,
        alerts=alerts,
        metrics=_settings(MetricsSettings(), doc.get("metrics", {}), "metrics"),
        openlineage=parse_settings(doc.get("openlineage"), "openlineage"),
    )


T = TypeVar("T")


def _settings(defaults: T, raw: Any, key: str) -> T:
    """A copy of the frozen settings dataclass `defaults` with the keys of a mapping replaced:
    every key optional, known and well typed."""
    assert dataclasses.is_dataclass(defaults) and not isinstance(defaults, type)
    fields = {f.name: f for f in dataclasses.fields(defaults) if f.init}
    doc = _mapping(raw if raw is not None else {}, key, set(fields))
    values: dict[str, Any] = {}
    for name, value in doc.items():
        default = getattr(defaults, name)
        where = f"{key}.{name}"
        if dataclasses.is_dataclass(default):
            values[name] = _settings(default, value, where)
        elif name == "trusted_teams":
            values[name] = parse_trusted_teams(value, where)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(where, f"expected true or false, got {value!r}")
            values[name] = value
        elif isinstance(default, int):
            values[name] = _int(value, where, minimum=0)
        elif isinstance(default, float):
            bounds = fields[name].metadata
            values[name] = _number(value, where, minimum=bounds.get("minimum", 0.0))
            if values[name] > bounds.get("maximum", math.inf):
                raise ConfigError(where, f"must be at most {bounds['maximum']:g}")
        else:
            values[name] = _str(value, where)
    return dataclasses.replace(defaults, **values)


def _check_detection(d: DetectionSettings) -> None:
    scope = d.peer.scope
    if scope not in ("fleet", "team") and not (scope.startswith("label:") and scope[6:]):
        raise ConfigError("detection.peer.scope", f"{scope!r} is not fleet, team or label:NAME")
    if d.peer.window not in ("all", "recent"):
        raise ConfigError("detection.peer.window", f"{d.peer.window!r} is not all or recent")
    if d.peer.statistics not in ("mean", "robust"):
        raise ConfigError(
            "detection.peer.statistics", f"{d.peer.statistics!r} is not mean or robust"
        )
    if d.consecutive_failures.critical < d.consecutive_failures.high:
        raise ConfigError("detection.consecutive_failures.critical", "must not be less than high")


def _check_alerts(a: AlertSettings) -> None:
    for key in ("resolve_after_runs", "history_size", "watch_queue_size"):
        if getattr(a, key) < 1:
            raise ConfigError(f"alerts.{key}", f"{getattr(a, key)} is less than 1")
    b = a.blast_radius
    for kind in ("pipelines", "teams"):
        high, critical = getattr(b, f"high_{kind}"), getattr(b, f"critical_{kind}")
        if high and critical and critical < high:
            raise ConfigError(
                f"alerts.blast_radius.critical_{kind}", f"{critical} is less than high_{kind}"
            )


SERVER_BOUNDS: dict[str, tuple[float, float]] = {
    "fsync_interval_seconds": (0.001, 3600.0),  # at 0 the syncer spins a core
    "shutdown_grace_seconds": (0.0, 86400.0),
    "wal_segment_bytes": (4096, 1 << 30),  # a record is at most 1 GiB (wal.MAX_RECORD_BYTES)
    "snapshot_log_bytes": (1, 1 << 53),
}
"""(minimum, maximum) of the `server:` numbers that differ from the rule: floats from 0,
whole numbers from 1 to INT32_MAX."""


def _server(raw: Mapping[str, Any], key: str) -> ServerConfig:
    known = {f.name for f in dataclasses.fields(ServerConfig)}
    for k in raw:
        if k not in known:
            raise ConfigError(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
    defaults = ServerConfig()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        if f.name not in raw:
            continue
        value = raw[f.name]
        name = f"{key}.{f.name}"
        if f.name == "limits":
            value = value if isinstance(value, IngestLimits) else _limits(value, name)
        elif f.name == "tls":
            value = value if isinstance(value, TLSConfig) or value is None else _tls(value, name)
        elif isinstance(getattr(defaults, f.name), str):
            value = _str(value, name, allow_empty=f.name == "http_listen")
        elif isinstance(getattr(defaults, f.name), float):
            low, high = SERVER_BOUNDS.get(f.name, (0.0, math.inf))
            value = _number(value, name, minimum=low, maximum=high)
        else:
            low, high = SERVER_BOUNDS.get(f.name, (1, INT32_MAX))
            value = _int(value, name, minimum=int(low), maximum=int(high))
        values[f.name] = value
    config = dataclasses.replace(defaults, **values)
    parse_hostport(config.listen, f"{key}.listen")
    if config.http_listen:
        parse_hostport(config.http_listen, f"{key}.http_listen")
    if config.fsync not in ("always", "interval", "off"):
        raise ConfigError(f"{key}.fsync", f"{config.fsync!r} is not one of always, interval, off")
    if config.shards > 4096:
        raise ConfigError(f"{key}.shards", f"{config.shards} is more than 4096")
    if config.window > 4096:
        raise ConfigError(f"{key}.window", f"{config.window} is more than 4096")
    for name in (
        "handshake_timeout_seconds",
        "connection_idle_seconds",
        "http_body_timeout_seconds",
    ):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{key}.{name}", "must be more than 0")
    return config


def _limits(raw: Any, key: str) -> IngestLimits:
    doc = _mapping(raw, key, {f.name for f in dataclasses.fields(IngestLimits) if f.init})
    # Each fits an int32: max_request_bytes is gRPC's max_receive_message_length.
    return IngestLimits(**{k: _int(v, f"{key}.{k}", minimum=1) for k, v in doc.items()})


def _check_unique(tokens: Sequence[AuthToken]) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        digest = t.sha256 or hashlib.sha256(t.token.encode()).hexdigest()
        if digest in seen:
            raise ConfigError(
                f"auth.tokens[{i}]", f"the same token as auth.tokens[{seen[digest]}]: one each"
            )
        seen[digest] = i


def _tls(raw: Any, key: str) -> TLSConfig:
    doc = _mapping(raw, key, {"cert", "key", "client_ca"})
    paths = {}
    for k in ("cert", "key", "client_ca"):
        if k not in doc and k != "client_ca":
            raise ConfigError(f"{key}.{k}", "missing: TLS needs a certificate and its key")
        if k in doc:
            paths[k] = _str(doc[k], f"{key}.{k}")
            if not Path(paths[k]).is_file():
                raise ConfigError(f"{key}.{k}", f"no file {paths[k]!r}")
    tls = TLSConfig(**paths)
    check_files(tls, key)
    return tls


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _token(raw: Any, key: str) -> AuthToken:
    doc = _mapping(raw, key, {"token", "sha256", "token_env", "team", "role"})
    given = [k for k in ("token", "sha256", "token_env") if k in doc]
    if not given:
        raise ConfigError(f"{key}.token", "missing (or give sha256: its digest, or token_env)")
    if len(given) > 1:
        raise ConfigError(key, f"give one of token, sha256 or token_env, not {' and '.join(given)}")
    role = _str(doc.get("role", "reader"), f"{key}.role")
    if role not in ROLES:
        raise ConfigError(f"{key}.role", f"{role!r} is not one of {', '.join(ROLES)}")
    team = _str(doc["team"], f"{key}.team") if "team" in doc else None
    if team is None and role != "admin":
        raise ConfigError(f"{key}.team", f"a {role} token needs a team")
    if "sha256" in doc:
        digest = _str(doc["sha256"], f"{key}.sha256").lower()
        if not _SHA256.fullmatch(digest):
            raise ConfigError(f"{key}.sha256", "expected 64 hexadecimal digits")
        return AuthToken(token="", team=team, role=role, sha256=digest)
    if "token_env" in doc:
        name = _str(doc["token_env"], f"{key}.token_env")
        token = os.environ.get(name, "")
        if not token:
            raise ConfigError(f"{key}.token_env", f"the environment variable {name} is not set")
    else:
        token = _str(doc.get("token"), f"{key}.token")
    return AuthToken(token=token, team=team, role=role)


def _list(doc: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = doc.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list, got {type(value).__name__}")
    return value


def check_exposure(config: Config, insecure: bool) -> str | None:
    """Why the server must not start as configured, or None. Without tokens there is no
    authentication, so anything but loopback would let anyone on the network read and write."""
    if config.tokens or insecure:
        return None
    sc = config.server
    for key, address in (("server.listen", sc.listen), ("server.http_listen", sc.http_listen)):
        if not address:
            continue
        host, _ = parse_hostport(address, key)
        if not is_loopback(host):
            return (
                f"{key} is {address}, which is not a loopback address, and no auth.tokens are "
                "configured: anyone who can reach it could read and write every team's data. "
                "Configure auth.tokens, listen on 127.0.0.1, or pass --insecure to accept this."
            )
    return None
