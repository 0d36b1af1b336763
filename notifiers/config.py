"""The `receivers:` and `routes:` of the configuration, typed and validated once at start.

`server/config.py` calls `parse_receivers` and `parse_routes` for its two keys. Every error is a
`ConfigError` naming the key (`receivers[2].smtp_port: ...`). Secrets (routing keys, webhook
URLs, SMTP passwords, webhook signing secrets) may be given in the file or, with the same key
and an `_env` suffix, as the name of an environment variable that holds them; they are read
here, at start, and kept out of every repr.

Besides its own keys, every receiver takes the delivery keys of `Delivery` (timeout, retries,
rate limit, queue size, repeat interval), with defaults that suit its type.
"""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipewarden.server.base.confparse import mapping as _mapping
from pipewarden.server.base.confparse import number
from pipewarden.server.base.confparse import string as _str
from pipewarden.server.base.confparse import whole as _int
from pipewarden.server.base.errors import ConfigError

__all__ = [
    "RECEIVER_TYPES",
    "ConsoleReceiver",
    "Delivery",
    "EmailReceiver",
    "Link",
    "PagerDutyReceiver",
    "Receiver",
    "Route",
    "SlackReceiver",
    "WebhookReceiver",
    "parse_receivers",
    "parse_routes",
]

RECEIVER_TYPES = ("pagerduty", "slack", "email", "webhook", "console")
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
LINK_FIELDS = ("pipeline_id", "team", "alert_id", "kind")
"""Placeholders a link's href may use, as {pipeline_id}; values are URL-quoted."""


@dataclass(frozen=True)
class Delivery:
    """How one receiver's worker delivers: every key may be set on the receiver itself."""

    timeout_seconds: float = 10.0
    """Longest one attempt may take (connect, send, answer)."""
    max_attempts: int = 10
    """Attempts before a notification goes to the dead letters (1 = no retry)."""
    retry_initial_seconds: float = 1.0
    """Wait before the second attempt; it doubles with each further one, with jitter."""
    retry_max_seconds: float = 60.0
    """Longest wait between attempts (a longer Retry-After is still honoured)."""
    rate_per_second: float = 1.0
    """Sustained notifications a second (token bucket); 0 means no limit. Receivers with the
    same routing key or URL share one bucket, with the settings of the first of them."""
    burst: int = 1
    """Notifications that may go at once before the rate applies."""
    queue_size: int = 1000
    """Notifications waiting for this receiver, at most; beyond it they are dead letters."""
    repeat_interval_seconds: float = 4 * 3600.0
    """An alert unchanged in severity and state is sent to this receiver again only after this
    long (the same alert submitted again sooner is dropped as a duplicate)."""


_DELIVERY_DEFAULTS: dict[str, Delivery] = {
    # PagerDuty accepts 120 events a minute per routing key. A page is retried for 35 to 45
    # minutes (50 attempts, at most a minute apart) before it is given up: an outage of the
    # pager should delay pages, not drop them.
    "pagerduty": Delivery(rate_per_second=2.0, burst=2, max_attempts=50),
    # Slack allows one message a second per incoming webhook.
    "slack": Delivery(rate_per_second=1.0, burst=1),
    "email": Delivery(rate_per_second=1.0, burst=5),
    "webhook": Delivery(rate_per_second=10.0, burst=10),
    "console": Delivery(rate_per_second=0.0, burst=1, max_attempts=1),
}


@dataclass(frozen=True)
class Link:
    """A link added to notifications, such as a runbook or a dashboard."""

    text: str
    """What the link says."""
    href: str
    """The URL; may use {pipeline_id}, {team}, {alert_id} and {kind}."""


@dataclass(frozen=True)
class PagerDutyReceiver:
    """PagerDuty Events API v2: trigger, acknowledge and resolve, one dedup_key per alert."""

    name: str
    """Name that routes refer to."""
    routing_key: str = field(repr=False)
    """The integration key of an Events API v2 integration (`routing_key` or `routing_key_env`)."""
    url: str = PAGERDUTY_URL
    """The events endpoint."""
    source: str = "pipewarden"
    """`payload.source`: where the events come from."""
    client_url: str = ""
    """`client_url`: a link back to Pipewarden shown with the incident, when set."""
    links: tuple[Link, ...] = ()
    """Links sent with each trigger."""
    delivery: Delivery = field(default_factory=lambda: _DELIVERY_DEFAULTS["pagerduty"])
    """Timeout, retries and rate limit."""
    type: Literal["pagerduty"] = "pagerduty"

    @property
    def rate_key(self) -> str:
        """Receivers with the same key share one rate limit (PagerDuty limits per routing key)."""
        return f"pagerduty:{self.url}:{self.routing_key}"


@dataclass(frozen=True)
class SlackReceiver:
    """A Slack incoming webhook: one Block Kit message per notification."""

    name: str
    """Name that routes refer to."""
    webhook_url: str = field(repr=False)
    """The incoming webhook's URL (`webhook_url` or `webhook_url_env`); it is the secret."""
    links: tuple[Link, ...] = ()
    """Links added to each message."""
    delivery: Delivery = field(default_factory=lambda: _DELIVERY_DEFAULTS["slack"])
    """Timeout, retries and rate limit."""
    type: Literal["slack"] = "slack"

    @property
    def rate_key(self) -> str:
        """Slack limits each webhook to a message a second."""
        return f"slack:{self.webhook_url}"


@dataclass(frozen=True)
class EmailReceiver:
    """Email over SMTP: a plain-text and an HTML part."""

    name: str
    """Name that routes refer to."""
    smtp_host: str
    """The SMTP server."""
    from_: str
    """The From address (key `from`)."""
    to: tuple[str, ...]
    """The recipients."""
    smtp_port: int = 587
    """The SMTP port; 587 by default, 465 with `tls: true`."""
    starttls: Literal["auto", "always", "never"] = "auto"
    """STARTTLS: when the server offers it (auto), required (always), or not used (never)."""
    tls: bool = False
    """Implicit TLS from the first byte (SMTPS, usually port 465)."""
    username: str = ""
    """Login name; no login when empty."""
    password: str = field(default="", repr=False)
    """Login password (`password` or `password_env`)."""
    ca_file: str = ""
    """PEM file of certificate authorities to trust besides the system's."""
    verify_tls: bool = True
    """Whether the server's certificate is checked."""
    links: tuple[Link, ...] = ()
    """Links added to each message."""
    delivery: Delivery = field(default_factory=lambda: _DELIVERY_DEFAULTS["email"])
    """Timeout, retries and rate limit."""
    type: Literal["email"] = "email"

    @property
    def rate_key(self) -> str:
        """One rate limit per server and sender."""
        return f"email:{self.smtp_host}:{self.smtp_port}:{self.from_}"


@dataclass(frozen=True)
class WebhookReceiver:
    """Any HTTP endpoint: a documented, versioned JSON body (see notifiers/webhook.py)."""

    name: str
    """Name that routes refer to."""
    url: str = field(repr=False)
    """Where to POST (`url` or `url_env`)."""
    secret: str = field(default="", repr=False)
    """When set, each request carries X-Pipewarden-Signature: sha256=HMAC(secret, body)."""
    links: tuple[Link, ...] = ()
    """Links added to each body."""
    delivery: Delivery = field(default_factory=lambda: _DELIVERY_DEFAULTS["webhook"])
    """Timeout, retries and rate limit."""
    type: Literal["webhook"] = "webhook"

    @property
    def rate_key(self) -> str:
        """One rate limit per URL."""
        return f"webhook:{self.url}"


@dataclass(frozen=True)
class ConsoleReceiver:
    """One line per notification on standard output: the default when nothing is configured."""

    name: str = "console"
    """Name that routes refer to."""
    delivery: Delivery = field(default_factory=lambda: _DELIVERY_DEFAULTS["console"])
    """No rate limit, one attempt."""
    type: Literal["console"] = "console"

    @property
    def rate_key(self) -> str:
        """Its own."""
        return f"console:{self.name}"


Receiver = PagerDutyReceiver | SlackReceiver | EmailReceiver | WebhookReceiver | ConsoleReceiver
"""Any receiver."""


@dataclass(frozen=True)
class Route:
    """Which receivers get a team's alerts, by severity. The first matching route wins."""

    team: str | None
    """The team this route is for; None matches every team."""
    critical: tuple[str, ...] = ()
    """Receivers of CRITICAL alerts."""
    high: tuple[str, ...] = ()
    """Receivers of HIGH alerts."""
    medium: tuple[str, ...] = ()
    """Receivers of MEDIUM alerts."""

    def receivers(self, severity: int) -> tuple[str, ...]:
        """The receivers of a pipewarden.v1.Severity number (none for UNSPECIFIED)."""
        if severity >= 3:
            return self.critical
        if severity == 2:
            return self.high
        if severity == 1:
            return self.medium
        return ()


# -- parsing --------------------------------------------------------------------------------------

_COMMON = {"name", "type", *(f.name for f in dataclasses.fields(Delivery))}
_KEYS: dict[str, set[str]] = {
    "pagerduty": {"url", "routing_key", "routing_key_env", "source", "client_url", "links"},
    "slack": {"webhook_url", "webhook_url_env", "links"},
    "email": {
        "smtp_host",
        "smtp_port",
        "from",
        "to",
        "starttls",
        "tls",
        "username",
        "username_env",
        "password",
        "password_env",
        "ca_file",
        "verify_tls",
        "links",
    },
    "webhook": {"url", "url_env", "secret", "secret_env", "links"},
    "console": set(),
}


def parse_receivers(
    raw: Any, key: str = "receivers", env: Mapping[str, str] | None = None
) -> tuple[Receiver, ...]:
    """Validate the `receivers:` list. Names and types are checked for every receiver first, so
    a duplicate name is reported as such; then each receiver's own keys. Environment variables
    named by `*_env` keys are read from `env` (default: the process's environment)."""
    items = _list(raw, key)
    env = os.environ if env is None else env
    names: list[str] = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        doc = _mapping(item, where, None)
        name = _str(doc.get("name"), f"{where}.name")
        rtype = _str(doc.get("type"), f"{where}.type")
        if rtype not in RECEIVER_TYPES:
            raise ConfigError(
                f"{where}.type", f"{rtype!r} is not one of {', '.join(RECEIVER_TYPES)}"
            )
        if name in names:
            raise ConfigError(key, f"receiver name {name!r} is used more than once")
        names.append(name)
    return tuple(_receiver(item, f"{key}[{i}]", env) for i, item in enumerate(items))


def parse_routes(raw: Any, receivers: Sequence[str], key: str = "routes") -> tuple[Route, ...]:
    """Validate the `routes:` list against the receiver names."""
    known = set(receivers)
    routes = []
    for i, item in enumerate(_list(raw, key)):
        where = f"{key}[{i}]"
        doc = _mapping(item, where, {"team", "critical", "high", "medium"})
        team = _str(doc["team"], f"{where}.team") if "team" in doc else None
        lists: dict[str, tuple[str, ...]] = {}
        for level in ("critical", "high", "medium"):
            names = tuple(
                _str(n, f"{where}.{level}[{j}]")
                for j, n in enumerate(_list(doc.get(level), f"{where}.{level}"))
            )
            for n in names:
                if n not in known:
                    raise ConfigError(f"{where}.{level}", f"no receiver is named {n!r}")
            lists[level] = names
        routes.append(Route(team=team, **lists))
    return tuple(routes)


def _receiver(raw: Mapping[str, Any], key: str, env: Mapping[str, str]) -> Receiver:
    rtype = raw["type"]
    allowed = _COMMON | _KEYS[rtype]
    doc = _mapping(raw, key, allowed)
    name: str = doc["name"]
    delivery = _delivery(doc, key, _DELIVERY_DEFAULTS[rtype])
    links = _links(doc.get("links"), f"{key}.links")
    if rtype == "pagerduty":
        return PagerDutyReceiver(
            name=name,
            routing_key=_secret(doc, "routing_key", key, env, required=True),
            url=_url(doc.get("url", PAGERDUTY_URL), f"{key}.url"),
            source=_str(doc.get("source", "pipewarden"), f"{key}.source"),
            client_url=_str(doc.get("client_url", ""), f"{key}.client_url", allow_empty=True),
            links=links,
            delivery=delivery,
        )
    if rtype == "slack":
        url = _secret(doc, "webhook_url", key, env, required=True)
        return SlackReceiver(
            name=name, webhook_url=_url(url, f"{key}.webhook_url"), links=links, delivery=delivery
        )
    if rtype == "webhook":
        url = _secret(doc, "url", key, env, required=True)
        return WebhookReceiver(
            name=name,
            url=_url(url, f"{key}.url"),
            secret=_secret(doc, "secret", key, env, required=False),
            links=links,
            delivery=delivery,
        )
    if rtype == "email":
        return _email(doc, key, env, links, delivery)
    return ConsoleReceiver(name=name, delivery=delivery)


def _email(
    doc: Mapping[str, Any],
    key: str,
    env: Mapping[str, str],
    links: tuple[Link, ...],
    delivery: Delivery,
) -> EmailReceiver:
    tls = _bool(doc.get("tls", False), f"{key}.tls")
    starttls = _str(doc.get("starttls", "auto"), f"{key}.starttls")
    if starttls not in ("auto", "always", "never"):
        raise ConfigError(f"{key}.starttls", f"{starttls!r} is not one of auto, always, never")
    if tls and starttls == "always":
        raise ConfigError(
            f"{key}.starttls", "tls: true is TLS from the first byte; STARTTLS cannot follow it"
        )
    to = doc.get("to")
    if isinstance(to, str):
        to = [to]
    recipients = tuple(_address(a, f"{key}.to[{i}]") for i, a in enumerate(_list(to, f"{key}.to")))
    if not recipients:
        raise ConfigError(f"{key}.to", "at least one recipient is needed")
    username = _secret(doc, "username", key, env, required=False)
    password = _secret(doc, "password", key, env, required=False)
    if password and not username:
        raise ConfigError(f"{key}.password", "a password needs a username")
    ca_file = _str(doc.get("ca_file", ""), f"{key}.ca_file", allow_empty=True)
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError(f"{key}.ca_file", f"{ca_file!r} is not a readable file")
    return EmailReceiver(
        name=doc["name"],
        smtp_host=_str(doc.get("smtp_host"), f"{key}.smtp_host"),
        smtp_port=_port(doc.get("smtp_port", 465 if tls else 587), f"{key}.smtp_port"),
        from_=_address(doc.get("from"), f"{key}.from"),
        to=recipients,
        starttls=starttls,  # type: ignore[arg-type]  # checked just above
        tls=tls,
        username=username,
        password=password,
        ca_file=ca_file,
        verify_tls=_bool(doc.get("verify_tls", True), f"{key}.verify_tls"),
        links=links,
        delivery=delivery,
    )


def _delivery(doc: Mapping[str, Any], key: str, defaults: Delivery) -> Delivery:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Delivery):
        if f.name not in doc:
            continue
        where = f"{key}.{f.name}"
        if isinstance(getattr(defaults, f.name), int):
            values[f.name] = _int(doc[f.name], where, minimum=1)
        else:
            values[f.name] = _number(doc[f.name], where)
    delivery = dataclasses.replace(defaults, **values)
    if delivery.timeout_seconds <= 0:
        raise ConfigError(f"{key}.timeout_seconds", "must be more than 0")
    if delivery.retry_max_seconds < delivery.retry_initial_seconds:
        raise ConfigError(f"{key}.retry_max_seconds", "must not be less than retry_initial_seconds")
    return delivery


def _secret(
    doc: Mapping[str, Any], name: str, key: str, env: Mapping[str, str], *, required: bool
) -> str:
    """`name` from the file, or from the environment variable that `name_env` names."""
    env_key = f"{name}_env"
    if name in doc and env_key in doc:
        raise ConfigError(f"{key}.{env_key}", f"give {name} or {env_key}, not both")
    if env_key in doc:
        variable = _str(doc[env_key], f"{key}.{env_key}")
        value = env.get(variable, "")
        if not value:
            raise ConfigError(f"{key}.{env_key}", f"the environment variable {variable} is not set")
        return value
    if name in doc:
        return _str(doc[name], f"{key}.{name}")
    if required:
        raise ConfigError(
            f"{key}.{name}", f"missing (give {name}, or {env_key} to read it from the environment)"
        )
    return ""


def _links(raw: Any, key: str) -> tuple[Link, ...]:
    links = []
    for i, item in enumerate(_list(raw, key)):
        where = f"{key}[{i}]"
        doc = _mapping(item, where, {"text", "href"})
        href = _str(doc.get("href"), f"{where}.href")
        for _, placeholder, _, _ in string.Formatter().parse(href):
            if placeholder is not None and placeholder not in LINK_FIELDS:
                raise ConfigError(
                    f"{where}.href",
                    f"unknown placeholder {{{placeholder}}} (known: {', '.join(LINK_FIELDS)})",
                )
        _url(href, f"{where}.href")
        links.append(Link(text=_str(doc.get("text", href), f"{where}.text"), href=href))
    return tuple(links)


def _url(value: Any, key: str) -> str:
    url = _str(value, key)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(key, "must be an http:// or https:// URL")
    return url


def _address(value: Any, key: str) -> str:
    address = _str(value, key)
    if "@" not in address or any(c in address for c in "\r\n"):
        raise ConfigError(key, f"{address!r} is not an email address")
    return address


def _port(value: Any, key: str) -> int:
    port = _int(value, key, minimum=1)
    if port > 65535:
        raise ConfigError(key, f"{port} is more than 65535")
    return port


def _list(value: Any, key: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"expected a list, got {type(value).__name__}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def _number(value: Any, key: str) -> float:
    return number(value, key, minimum=0)
