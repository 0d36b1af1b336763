"""`pipewarden alerts`, `watch`, `ack` and `silence` against a real server process."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipewarden.client import Client
from tests.support.alerting import failures
from tests.support.commands import ONLY_STREAKS, pw
from tests.support.process import BIN, ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    config = tmp_path / "pipewarden.yaml"
    config.write_text(ONLY_STREAKS)
    proc = ServerProcess(tmp_path / "data", "--config", str(config))
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.kill()


def _wait_for_alerts(client: Client, n: int) -> list:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = client.alerts()
        if len(found) >= n:
            return found
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} alerts")


def test_watch_alerts_ack_and_history(server: ServerProcess) -> None:
    t = server.target
    watch = subprocess.Popen(
        [str(BIN), "watch", "--target", t, "--json", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stderr is not None
        assert "watching alert events" in watch.stderr.readline()  # subscribed
        with Client(t) as client:
            client.ingest([*failures("etl.orders", 3), *failures("etl.bills", 5, team="b")])
            found = _wait_for_alerts(client, 2)
        out, errors = watch.communicate(timeout=20)
    finally:
        watch.kill()
    assert watch.returncode == 0, errors
    events = [json.loads(line) for line in out.splitlines()]
    assert sorted(e["alert"]["pipelineId"] for e in events) == ["etl.bills", "etl.orders"]
    assert {e["type"] for e in events} == {"ALERT_EVENT_TYPE_FIRED"}

    listed = json.loads(pw("alerts", "--target", t, "--json").stdout)
    assert [a["pipelineId"] for a in listed] == ["etl.bills", "etl.orders"]  # critical first
    table = pw("alerts", "--target", t)
    assert table.returncode == 0 and "etl.orders" in table.stdout and "critical" in table.stdout
    orders = next(a for a in found if a.pipeline_id == "etl.orders")
    acked = pw("ack", orders.alert_id, "--by", "ana", "--target", t)
    assert acked.returncode == 0, acked.stderr
    assert f"acknowledged {orders.alert_id}" in acked.stdout
    assert "acked by ana" in pw("alerts", "--target", t).stdout
    routed = pw("alerts", "--routed", "--target", t)
    assert "team-a" in routed.stdout and "etl.bills" in routed.stdout
    history = pw("alerts", "--history", "--target", t)
    assert "acknowledged" in history.stdout and "fired" in history.stdout
    only_b = json.loads(pw("alerts", "--team", "b", "--json", "--target", t).stdout)
    assert [a["pipelineId"] for a in only_b] == ["etl.bills"]
    missing = pw("ack", "a-nope", "--by", "ana", "--target", t)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    nobody = pw("ack", orders.alert_id, "--by", "", "--target", t)
    assert nobody.returncode == 1 and "INVALID_ARGUMENT" in nobody.stderr


def test_silence_create_list_delete(server: ServerProcess) -> None:
    t = server.target
    made = pw(
        "silence", "create", "--team", "team-a", "--kind", "consecutive_failures",
        "--for", "2h", "--by", "ana", "--comment", "deploy", "--json", "--target", t,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    silence = json.loads(made.stdout)
    assert silence["team"] == "team-a" and silence["kind"] == "ANOMALY_KIND_CONSECUTIVE_FAILURES"
    listed = pw("silence", "list", "--target", t)
    assert silence["silenceId"] in listed.stdout and "deploy" in listed.stdout
    with Client(t) as client:
        client.ingest(failures("etl.orders", 3))
        assert _wait_for_alerts(client, 1)[0].silenced
    # On a terminal narrower than the table needs, each alert takes two lines: its notes are
    # styled, not printed as raw markup.
    for columns in ("100", "200"):
        shown = pw("alerts", "--target", t, columns=columns)
        assert shown.returncode == 0, shown.stderr
        assert "etl.orders" in shown.stdout and "silenced" in shown.stdout
        assert "[/]" not in shown.stdout and "[dim]" not in shown.stdout
    ended = pw("silence", "delete", silence["silenceId"], "--by", "ana", "--target", t)
    assert ended.returncode == 0 and "ended silence" in ended.stdout
    assert "No silences." in pw("silence", "list", "--target", t).stdout
    bad_kind = pw("silence", "create", "--kind", "bogus", "--for", "1h", "--target", t)
    assert bad_kind.returncode == 2 and "consecutive_failures" in bad_kind.stderr
    bad_span = pw("silence", "create", "--for", "soon", "--target", t)
    assert bad_span.returncode == 2 and "--for" in bad_span.stderr
    past = pw("silence", "create", "--until", "2001-01-01T00:00:00Z", "--by", "a", "--target", t)
    assert past.returncode == 1 and "INVALID_ARGUMENT" in past.stderr
