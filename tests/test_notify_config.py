"""Receivers and routes: each adapter's keys, secrets from the environment, mistakes by key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipewarden.notifiers.config import (
    ConsoleReceiver,
    EmailReceiver,
    PagerDutyReceiver,
    SlackReceiver,
    WebhookReceiver,
    parse_receivers,
    parse_routes,
)
from pipewarden.notifiers.router import Router
from pipewarden.server.base.errors import ConfigError
from pipewarden.server.config import parse

ENV = {
    "PD_KEY": "pd-secret",
    "SLACK_URL": "https://hooks.example.invalid/T/B/x",
    "SMTP_PW": "smtp-secret",
}


def test_every_adapter_with_its_keys() -> None:
    receivers = parse_receivers(
        [
            {
                "name": "oncall",
                "type": "pagerduty",
                "routing_key_env": "PD_KEY",
                "url": "http://127.0.0.1:9/v2/enqueue",
                "source": "pw-prod",
                "links": [{"text": "Runbook", "href": "https://wiki.invalid/{pipeline_id}"}],
                "rate_per_second": 100,
                "burst": 50,
                "timeout_seconds": 2.5,
            },
            {"name": "chat", "type": "slack", "webhook_url_env": "SLACK_URL"},
            {
                "name": "mail",
                "type": "email",
                "smtp_host": "smtp.invalid",
                "from": "pw@x.invalid",
                "to": ["a@x.invalid", "b@x.invalid"],
                "username": "pw",
                "password_env": "SMTP_PW",
            },
            {
                "name": "smtps",
                "type": "email",
                "smtp_host": "smtp.invalid",
                "tls": True,
                "from": "pw@x.invalid",
                "to": "a@x.invalid",
                "starttls": "never",
            },
            {"name": "hook", "type": "webhook", "url": "https://hook.invalid/in", "secret": "s"},
            {"name": "out", "type": "console"},
        ],
        env=ENV,
    )
    pd, slack, mail, smtps, hook, out = receivers
    assert isinstance(pd, PagerDutyReceiver) and pd.routing_key == "pd-secret"
    assert pd.delivery.rate_per_second == 100 and pd.delivery.burst == 50
    assert pd.delivery.timeout_seconds == 2.5 and pd.delivery.max_attempts == 50
    assert pd.links[0].href == "https://wiki.invalid/{pipeline_id}"
    assert isinstance(slack, SlackReceiver) and slack.webhook_url == ENV["SLACK_URL"]
    assert slack.delivery.rate_per_second == 1.0  # Slack's one message a second
    assert isinstance(mail, EmailReceiver) and mail.smtp_port == 587 and mail.starttls == "auto"
    assert mail.password == "smtp-secret" and mail.to == ("a@x.invalid", "b@x.invalid")
    assert isinstance(smtps, EmailReceiver) and smtps.smtp_port == 465 and smtps.tls
    assert isinstance(hook, WebhookReceiver) and hook.secret == "s"
    assert isinstance(out, ConsoleReceiver)
    # Secrets stay out of reprs (and so out of logs and tracebacks).
    text = repr(receivers)
    for secret in ("pd-secret", ENV["SLACK_URL"], "smtp-secret", "hook.invalid"):
        assert secret not in text


def test_pagerduty_defaults_follow_its_limits() -> None:
    (pd,) = parse_receivers([{"name": "p", "type": "pagerduty", "routing_key": "k"}])
    assert isinstance(pd, PagerDutyReceiver)
    assert pd.url == "https://events.pagerduty.com/v2/enqueue"
    assert pd.delivery.rate_per_second * 60 == 120


def test_routes_first_match_wins_and_a_route_without_team_matches_all() -> None:
    config = parse(
        {
            "receivers": [
                {"name": "oncall", "type": "pagerduty", "routing_key": "k"},
                {"name": "chat", "type": "slack", "webhook_url": "https://s.invalid/x"},
                {"name": "mail", "type": "email", "smtp_host": "h", "from": "a@b", "to": ["c@d"]},
            ],
            "routes": [
                {"team": "payments", "critical": ["oncall"], "high": ["chat"], "medium": ["mail"]},
                {"critical": ["oncall", "chat"], "high": ["chat"], "medium": ["chat"]},
                {"team": "never", "critical": ["mail"]},
            ],
        }
    )
    router = Router(config.receivers, config.routes)
    assert router.route("payments", 3) == ("oncall",)
    assert router.route("payments", 2) == ("chat",)
    assert router.route("payments", 1) == ("mail",)
    assert router.route("sales", 3) == ("oncall", "chat")
    assert router.route("never", 3) == ("oncall", "chat")  # the catch-all came first
    assert router.route("sales", 0) == ()


def test_nothing_configured_means_the_console() -> None:
    router = Router((), ())
    assert router.route("anyone", 1) == ("console",)
    assert isinstance(router.receivers["console"], ConsoleReceiver)
    # Receivers without routes notify nobody: the routes decide.
    (slack,) = parse_receivers([{"name": "c", "type": "slack", "webhook_url": "https://s.invalid"}])
    assert Router((slack,), ()).route("anyone", 3) == ()


BAD: list[tuple[Any, str]] = [
    ([{"name": "p", "type": "pagerduty"}], "receivers[0].routing_key: missing"),
    (
        [{"name": "p", "type": "pagerduty", "routing_key_env": "NOPE"}],
        "receivers[0].routing_key_env: the environment variable NOPE is not set",
    ),
    (
        [{"name": "p", "type": "pagerduty", "routing_key": "k", "routing_key_env": "PD_KEY"}],
        "receivers[0].routing_key_env: give routing_key or routing_key_env, not both",
    ),
    (
        [{"name": "p", "type": "pagerduty", "routing_key": "k", "url": "ftp://x"}],
        "receivers[0].url: must be an http:// or https:// URL",
    ),
    (
        [{"name": "p", "type": "pagerduty", "routing_key": "k", "webhook_url": "x"}],
        "receivers[0].webhook_url: unknown key",
    ),
    (
        [{"name": "p", "type": "pagerduty", "routing_key": "k", "burst": 0}],
        "receivers[0].burst: 0 is less than 1",
    ),
    (
        [{"name": "p", "type": "pagerduty", "routing_key": "k", "timeout_seconds": "slow"}],
        "receivers[0].timeout_seconds: expected a number",
    ),
    (
        [
            {
                "name": "p",
                "type": "pagerduty",
                "routing_key": "k",
                "links": [{"href": "https://x.invalid/{pipeline}"}],
            }
        ],
        "receivers[0].links[0].href: unknown placeholder {pipeline}",
    ),
    ([{"name": "s", "type": "slack"}], "receivers[0].webhook_url: missing"),
    (
        [{"name": "m", "type": "email", "smtp_host": "h", "from": "a@b", "to": []}],
        "receivers[0].to: at least one recipient is needed",
    ),
    (
        [{"name": "m", "type": "email", "smtp_host": "h", "from": "nobody", "to": ["c@d"]}],
        "receivers[0].from: 'nobody' is not an email address",
    ),
    (
        [
            {
                "name": "m",
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["c@d"],
                "starttls": "sometimes",
            }
        ],
        "receivers[0].starttls: 'sometimes' is not one of auto, always, never",
    ),
    (
        [
            {
                "name": "m",
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["c@d"],
                "tls": True,
                "starttls": "always",
            }
        ],
        "receivers[0].starttls: tls: true is TLS from the first byte",
    ),
    (
        [
            {
                "name": "m",
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["c@d"],
                "password": "p",
            }
        ],
        "receivers[0].password: a password needs a username",
    ),
    (
        [
            {
                "name": "m",
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["c@d"],
                "smtp_port": 70000,
            }
        ],
        "receivers[0].smtp_port: 70000 is more than 65535",
    ),
    ([{"name": "w", "type": "webhook"}], "receivers[0].url: missing"),
    (
        [
            {
                "name": "w",
                "type": "webhook",
                "url": "https://x",
                "retry_initial_seconds": 9,
                "retry_max_seconds": 1,
            }
        ],
        "receivers[0].retry_max_seconds: must not be less than retry_initial_seconds",
    ),
]


@pytest.mark.parametrize(("doc", "message"), BAD, ids=[m for _, m in BAD])
def test_mistakes_name_the_key(doc: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_receivers(doc, env=ENV)
    assert message in str(info.value)


def test_route_mistakes_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"routes\[1\]\.high: no receiver is named 'x'"):
        parse_routes([{"critical": []}, {"high": ["x"]}], ["a"])
    with pytest.raises(ConfigError, match=r"routes\[0\]\.medium: expected a list"):
        parse_routes([{"medium": "a"}], ["a"])


def test_ca_file_must_exist(tmp_path: Path) -> None:
    doc = {"name": "m", "type": "email", "smtp_host": "h", "from": "a@b", "to": ["c@d"]}
    with pytest.raises(ConfigError, match=r"receivers\[0\]\.ca_file"):
        parse_receivers([{**doc, "ca_file": str(tmp_path / "missing.pem")}])
    (tmp_path / "ca.pem").write_text("x")
    (mail,) = parse_receivers([{**doc, "ca_file": str(tmp_path / "ca.pem")}])
    assert isinstance(mail, EmailReceiver) and mail.ca_file.endswith("ca.pem")
