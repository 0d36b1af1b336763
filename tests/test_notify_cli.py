"""`pipewarden dead-letters` reads the data directory: a table for people, JSON for tools."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pipewarden.notifiers.config import parse_receivers, parse_routes
from pipewarden.notifiers.dispatcher import Dispatcher
from tests.support.alert_events import event
from tests.support.peers import PD_PATH, HttpPeer
from tests.support.process import BIN


def pw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


async def test_dead_letters_command(tmp_path: Path) -> None:
    data = tmp_path / "data"
    empty = pw("dead-letters", "--data-dir", str(data))
    assert empty.returncode == 0 and "No dead letters" in empty.stdout

    peer = HttpPeer()
    await peer.start()
    # A routing key PagerDuty refuses (400): not retried, a dead letter at once.
    receivers = parse_receivers(
        [{"name": "oncall", "type": "pagerduty", "url": peer.url(PD_PATH), "routing_key": "bad"}]
    )
    d = Dispatcher(receivers, parse_routes([{"critical": ["oncall"]}], ["oncall"]), data_dir=data)
    await d.start()
    try:
        d.submit(event("dl-1", pipeline_id="sales.orders", team="sales"))
        d.submit(event("dl-2", pipeline_id="sales.refunds", team="sales"))
        assert await d.drain(10)
    finally:
        await d.close()
        await peer.stop()

    table = pw("dead-letters", "--data-dir", str(data))
    assert table.returncode == 0, table.stderr
    assert "Dead letters (2)" in table.stdout
    assert "sales.orders" in table.stdout and "oncall (pagerduty)" in table.stdout
    assert "HTTP 400" in table.stdout

    out = pw("dead-letters", "--data-dir", str(data), "--json", "--limit", "1")
    (letter,) = json.loads(out.stdout)
    assert letter["alert_id"] == "dl-2" and letter["status"] == 400
    none = pw("dead-letters", "--data-dir", str(data), "--json", "--receiver", "chat")
    assert json.loads(none.stdout) == []
