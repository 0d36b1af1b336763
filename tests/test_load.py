"""A short load test of a real `pipewarden serve` process, loopback only: many concurrent
StreamIngest streams with team tokens for a few seconds, resident memory sampled, then kill -9
and recovery: every execution acknowledged as accepted is counted again. (`make bench` runs the
long version: `python -m bench load`.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.load import auth_config, drive, totals
from tests.support.process import ServerProcess

STREAMS = 60
SECONDS = 3.0
RSS_BOUND_MIB = 300.0
"""Measured here: about 60 MiB idle; 121 MiB at the peak of `python -m bench --quick load`
(50 streams for 10 s, 550,000 executions)."""


async def test_many_streams_bounded_memory_nothing_acknowledged_lost(tmp_path: Path) -> None:
    config = tmp_path / "pipewarden.yaml"
    config.write_text(yaml.safe_dump(auth_config()))
    data = tmp_path / "data"
    server = ServerProcess(data, "--config", str(config))
    try:
        server.wait_serving()
        result = await drive(server.target, server.proc.pid, STREAMS, SECONDS, lambda _: None)
        assert server.proc.poll() is None, server.log()
    finally:
        server.kill()
    assert not result.errors, result.errors[:5]
    assert result.acknowledged > 0 and len(result.rss_samples) >= 5
    assert result.peak_rss_mib < RSS_BOUND_MIB, result.rss_samples
    again = ServerProcess(data, "--config", str(config))
    try:
        again.wait_serving()
        assert await totals(again.target) == result.acknowledged
    finally:
        again.stop()
