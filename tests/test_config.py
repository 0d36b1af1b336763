"""Configuration: the contract's file parses; every mistake is named by its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipewarden.server.base.errors import ConfigError
from pipewarden.server.config import Config, load, parse

DOCUMENTED_EXAMPLE = """
server:  {listen: "127.0.0.1:50051", http_listen: "127.0.0.1:9095", data_dir: "./var"}
receivers:
  - {name: oncall, type: pagerduty, url: "https://example.invalid/v2/enqueue", routing_key: "k"}
  - {name: chat, type: slack, webhook_url: "https://example.invalid/hook"}
  - {name: mail, type: email, smtp_host: "smtp.example.invalid", smtp_port: 587,
     from: "pw@example.invalid", to: ["oncall@example.invalid"], starttls: auto}
  - {name: hook, type: webhook, url: "https://example.invalid/hook"}
routes:
  - {team: payments, critical: [oncall], high: [chat], medium: [mail]}
  - {critical: [oncall], high: [chat], medium: [chat]}
auth:
  tokens:
    - {token: "secret", team: payments, role: writer}
"""


def test_the_contract_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "pipewarden.yaml"
    path.write_text(DOCUMENTED_EXAMPLE)
    config = load(path)
    assert config.server.listen == "127.0.0.1:50051"
    assert [r.name for r in config.receivers] == ["oncall", "chat", "mail", "hook"]
    assert config.receivers[2].type == "email" and config.receivers[2].smtp_port == 587
    assert config.routes[0].team == "payments" and config.routes[1].team is None
    assert config.routes[0].critical == ("oncall",)
    assert config.tokens[0].role == "writer"


def test_no_file_and_an_empty_file_give_the_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load(None) == Config() == load(empty)
    assert Config().server.listen == "127.0.0.1:50051"
    assert Config().server.http_listen == "127.0.0.1:9095"
    assert Config().server.data_dir == "./var"


def test_flags_override_the_file() -> None:
    config = parse({"server": {"listen": "127.0.0.1:6000", "data_dir": "/a"}})
    merged = config.with_overrides(listen="127.0.0.1:7000", http_listen=None, data_dir=None)
    assert merged.server.listen == "127.0.0.1:7000"
    assert merged.server.data_dir == "/a"
    with pytest.raises(ConfigError, match=r"server\.listen"):
        config.with_overrides(listen="nonsense")


BAD: list[tuple[Any, str]] = [
    ({"sever": {}}, "sever: unknown key"),
    ({"server": {"listen": "localhost"}}, "server.listen: 'localhost' is not HOST:PORT"),
    ({"server": {"listen": "127.0.0.1:99999"}}, "server.listen: '127.0.0.1:99999': the port"),
    ({"server": {"shards": 0}}, "server.shards: 0 is less than 1"),
    ({"server": {"shards": "many"}}, "server.shards: expected a whole number"),
    ({"server": {"window": True}}, "server.window: expected a whole number"),
    ({"server": {"limits": {"max_labels": -1}}}, "server.limits.max_labels: -1 is less than 1"),
    ({"server": {"limits": {"max_lables": 3}}}, "server.limits.max_lables: unknown key"),
    ({"server": []}, "server: expected a mapping"),
    ({"receivers": [{"name": "x", "type": "pigeon"}]}, "receivers[0].type: 'pigeon' is not one"),
    ({"receivers": [{"type": "slack"}]}, "receivers[0].name: missing"),
    (
        {"receivers": [{"name": "a", "type": "slack"}, {"name": "a", "type": "email"}]},
        "receivers: receiver name 'a' is used more than once",
    ),
    ({"routes": [{"critical": ["ghost"]}]}, "routes[0].critical: no receiver is named 'ghost'"),
    ({"routes": [{"teams": "x"}]}, "routes[0].teams: unknown key"),
    ({"auth": {"tokens": [{"token": "t", "role": "god"}]}}, "auth.tokens[0].role: 'god'"),
    ({"auth": {"tokens": [{"token": "t", "role": "writer"}]}}, "auth.tokens[0].team: a writer"),
    ({"auth": {"tokens": [{"role": "admin"}]}}, "auth.tokens[0].token: missing"),
    ("just a string", "(top level): expected a mapping"),
    (
        {"detection": {"profile": {"utc_offset_hours": 15}}},
        "detection.profile.utc_offset_hours: must be at most 14",
    ),
    (
        {"detection": {"profile": {"utc_offset_hours": -15}}},
        "detection.profile.utc_offset_hours: -15 is less than -14",
    ),
    ({"detection": {"peer": {"duration": {"new_pipelines": 1}}}}, "expected true or false"),
    ({"alerts": {"resolve_after_runs": 0}}, "alerts.resolve_after_runs: 0 is less than 1"),
    ({"alerts": {"hold_seconds": -5}}, "alerts.hold_seconds: -5 is less than 0"),
    ({"alerts": {"escalate_after": {"low": 60}}}, "alerts.escalate_after.low: unknown key"),
    ({"alerts": {"escalate_after": {"high": "1h"}}}, "alerts.escalate_after.high: expected a"),
    ({"alerts": {"repeat": 60}}, "alerts.repeat: unknown key"),
    (
        {"alerts": {"blast_radius": {"high_pipelines": 10, "critical_pipelines": 5}}},
        "alerts.blast_radius.critical_pipelines: 5 is less than high_pipelines",
    ),
]


def test_the_docs_document_the_defaults() -> None:
    """The configuration page's example parses to exactly the defaults, section by section."""
    text = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    block = text[text.index("```yaml\nserver:") + len("```yaml\n") :]
    block = block[: block.index("```")]
    assert parse(yaml.safe_load(block)) == Config()


@pytest.mark.parametrize(("doc", "message"), BAD, ids=[m for _, m in BAD])
def test_mistakes_name_the_key(doc: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(doc)
    assert message in str(info.value)


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("server: {listen: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(broken)
    assert yaml.safe_load(DOCUMENTED_EXAMPLE)


def test_the_alerts_section_and_its_defaults() -> None:
    defaults = Config().alerts
    # Clear for 2 runs; MEDIUM escalates after 4 h, HIGH after 1 h; repeats 4-hourly.
    assert defaults.resolve_after_runs == 2
    assert (defaults.escalate_after.medium, defaults.escalate_after.high) == (14400, 3600)
    assert defaults.repeat_interval_seconds == 14400
    config = parse(
        {
            "alerts": {
                "resolve_after_runs": 3,
                "hold_seconds": 300,
                "escalate_after": {"medium": 600},
                "blast_radius": {"enabled": False},
            }
        }
    )
    assert config.alerts.resolve_after_runs == 3 and config.alerts.hold_seconds == 300.0
    assert config.alerts.escalate_after.medium == 600 and config.alerts.escalate_after.high == 3600
    assert not config.alerts.blast_radius.enabled
