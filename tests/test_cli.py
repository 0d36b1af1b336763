"""The `pipewarden` command against a real server process."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.commands import pw
from tests.support.process import BIN, ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data")
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.kill()


LINES = [
    {
        "executionId": "e1",
        "pipelineId": "etl.orders",
        "team": "sales",
        "status": "EXECUTION_STATUS_SUCCEEDED",
        "startedAt": "2026-11-26T08:00:00Z",
        "finishedAt": "2026-11-26T08:01:00Z",
        "recordsProcessed": "100",
    },
    {
        "executionId": "e2",
        "pipelineId": "etl.orders",
        "team": "sales",
        "status": "EXECUTION_STATUS_FAILED",
        "startedAt": "2026-11-26T09:00:00Z",
        "duration": "30s",
        "recordsProcessed": 50,
        "errorMessage": "boom",
    },
    {
        "executionId": "e1",
        "pipelineId": "etl.orders",
        "team": "sales",
        "status": "EXECUTION_STATUS_SUCCEEDED",
    },
    {
        "executionId": "e3",
        "pipelineId": "etl.orders",
        "team": "sales",
        "status": "EXECUTION_STATUS_SUCCEEDED",
        "recordsProcessed": -1,
    },
]


def test_send_health_and_teams(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in LINES) + "\n{not json\n")
    sent = pw("send", str(path), "--target", server.target, "--json")
    assert sent.returncode == 1, sent.stderr  # some lines were rejected
    result = json.loads(sent.stdout)
    assert (result["accepted"], result["duplicates"]) == (2, 1)
    assert [(r["line"], r["execution_id"]) for r in result["rejected"]] == [(4, "e3"), (5, "")]
    assert "records_processed is -1" in result["rejected"][0]["reason"]

    health = json.loads(pw("health", "--target", server.target, "--json").stdout)
    assert [(h["pipelineId"], h["totalExecutions"], h["successRate"]) for h in health] == [
        ("etl.orders", "2", 0.5)
    ]
    one = json.loads(pw("health", "etl.orders", "--target", server.target, "--json").stdout)
    assert one["avgDurationSeconds"] == 45.0 and one["lastErrorMessage"] == "boom"
    table = pw("health", "--target", server.target)
    assert table.returncode == 0 and "etl.orders" in table.stdout and "50.0%" in table.stdout
    teams = pw("teams", "--target", server.target)
    assert teams.returncode == 0 and "sales" in teams.stdout
    missing = pw("health", "nope", "--target", server.target)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_send_from_standard_input(server: ServerProcess) -> None:
    sent = pw("send", "-", "--target", server.target, stdin=json.dumps(LINES[0]) + "\n")
    assert sent.returncode == 0, sent.stderr
    assert "accepted 1" in sent.stdout


def test_client_commands_explain_an_unreachable_server(tmp_path: Path) -> None:
    from tests.support.process import free_port

    out = pw("teams", "--target", f"127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "cannot reach Pipewarden" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signals(tmp_path: Path, sig: int) -> None:
    proc = ServerProcess(tmp_path / "data")
    proc.wait_serving()
    assert proc.stop(sig) == 0
    assert "stopped" in proc.log()


def test_serve_refuses_a_bad_configuration(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server: {shards: 0}\n")
    out = pw("serve", "--config", str(config))
    assert out.returncode == 2
    assert "server.shards: 0 is less than 1" in out.stderr


def test_serve_imports_no_library_it_does_not_use() -> None:
    # aiohttp takes a tenth of a second of every start: a node without an HTTP port and
    # without HTTP receivers (PagerDuty, Slack, webhooks) must not pay it. Nor does it need
    # the SMTP library without an email receiver, or the client library at all.
    unused = ("aiohttp", "aiosmtplib", "pipewarden.client")
    code = (
        "import sys, pipewarden.cli, pipewarden.server.app, pipewarden.notifiers.dispatcher\n"
        f"unused = {unused!r}\n"
        "print(sorted(m for m in sys.modules if m.startswith(unused)))"
    )
    out = subprocess.run(
        [str(BIN.parent / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_second_server_on_a_data_directory_refuses_before_touching_it(
    server: ServerProcess,
) -> None:
    # Opening a log cuts a torn tail and deletes leftover temporary files; a second server that
    # did so while the first one writes would cut records the first has acknowledged. So the
    # second must stop before it reads anything: the probe a log's opening would delete stays.
    probe = server.data_dir / "wal" / "probe.tmp"
    probe.write_bytes(b"left by the test")
    second = ServerProcess(server.data_dir)
    assert second.proc.wait(20) == 1
    second.stop()
    assert "is in use by another process" in second.log()
    assert probe.exists()
    # The first server goes on as before.
    sent = pw("send", "-", "--target", server.target, stdin=json.dumps(LINES[0]) + "\n")
    assert sent.returncode == 0, sent.stderr
    assert "accepted 1" in sent.stdout


def test_send_waits_for_a_busy_server(tmp_path: Path) -> None:
    import grpc

    from pipewarden.v1 import service_pb2, service_pb2_grpc

    config = tmp_path / "pipewarden.yaml"
    config.write_text("server: {max_streams: 1}\n")
    server = ServerProcess(tmp_path / "data", "--config", str(config))
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.target) as channel:
            # A watcher holds the only stream place: send's stream is refused, with a hint.
            watch = service_pb2_grpc.PipelineMonitorStub(channel).WatchAlerts(
                service_pb2.WatchAlertsRequest()
            )
            watch.initial_metadata()
            sender = subprocess.Popen(
                [str(BIN), "send", "-", "--target", server.target],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
            )
            assert sender.stdin and sender.stdout and sender.stderr
            with sender.stdin as stdin:
                stdin.write(json.dumps(LINES[0]) + "\n")
            with sender.stdout as stdout, sender.stderr as stderr:
                assert "busy" in stderr.readline()
                watch.cancel()
                assert sender.wait(timeout=30) == 0, stderr.read()
                assert "accepted 1" in stdout.read()
    finally:
        server.kill()
