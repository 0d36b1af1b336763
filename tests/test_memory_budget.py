"""A pipeline's worst-case memory at the default limits stays within PIPELINE_MEMORY_BUDGET.

Measured, not computed: pipelines are built through the real ingest path (protobuf requests,
validation, dedup, shards) and judged by every detector, with every label, upstream id,
in-flight run id and error text at its longest in 4-byte characters (a str of them takes four
bytes a character); tracemalloc counts what they keep once the requests are gone. Raising a
default limit (or MAX_IN_FLIGHT) past the budget fails here.
"""

from __future__ import annotations

import gc
import tracemalloc

from pipewarden.server.core.dedup import SeenExecutions
from pipewarden.server.core.ingest import Ingestor
from pipewarden.server.core.limits import PIPELINE_MEMORY_BUDGET, IngestLimits
from pipewarden.server.core.shards import MAX_IN_FLIGHT, ShardSet
from pipewarden.server.detection.engine import DetectionEngine
from pipewarden.server.detection.settings import DetectionSettings
from pipewarden.server.storage.eventlog import MemoryLog
from pipewarden.v1 import execution_pb2
from tests.support.helpers import T0, request, run

WIDE = "\U0001f600"  # 4 bytes a character in a str
PIPELINES = 100


class _Discard(MemoryLog):
    """A log that keeps nothing: the log's bytes are on disk, not in a pipeline's state."""

    def append(self, payload: bytes) -> int:
        self._base += 1
        return self._base


def _text(tag: str, length: int) -> str:
    """A distinct string of `length` characters, as wide as they come."""
    return tag + WIDE * (length - len(tag))


def _runs(
    pid: str, name: str, limits: IngestLimits, k: int
) -> list[execution_pb2.PipelineExecution]:
    """A failed run of `pid` (short `name`) with every field at its limit, and as many runs in
    flight as a pipeline remembers; `k` tells one request's strings from another's."""
    tag = f"{name}/{k}/"
    labels = {
        _text(f"{tag}k{j}", limits.max_label_length): _text(f"{tag}v{j}", limits.max_label_length)
        for j in range(limits.max_labels)
    }
    upstream = [_text(f"{tag}u{j}", limits.max_id_length) for j in range(limits.max_upstreams)]
    failed = run(
        _text(f"{tag}x", limits.max_id_length),
        pid,
        "team",
        "failed",
        start=T0 + k * 3600,
        labels=labels,
        upstream=upstream,
        error_message=_text(f"{tag}e", limits.max_error_message_length),
    )
    running = [
        run(_text(f"{tag}r{j}", limits.max_id_length), pid, "team", "running", start=T0 + k)
        for j in range(MAX_IN_FLIGHT)
    ]
    return [failed, *running]


def _build(ingestor: Ingestor, engine: DetectionEngine, prefix: str, n: int) -> None:
    limits = ingestor.limits
    names = [f"{prefix}{i}" for i in range(n)]
    pids = {name: _text(f"{name}-", limits.max_id_length) for name in names}
    # Twice, so that what a pipeline keeps of its latest run replaces what it kept before.
    for k in range(2):
        req = request(*(r for name in names for r in _runs(pids[name], name, limits, k)))
        outcome, _ = ingestor.ingest(req.SerializeToString(), req)
        assert not outcome.rejected, outcome.rejected[0]
        assert outcome.accepted == n
    for state in list(ingestor.shards.pipelines()):
        engine.evaluate(state, ingestor.shards, T0 + 86400)


def test_a_pipeline_at_every_default_limit_fits_its_memory_budget() -> None:
    limits = IngestLimits(max_executions_per_request=1_000_000, max_request_bytes=1 << 30)
    shards = ShardSet(16, window=64)
    ingestor = Ingestor(shards, SeenExecutions(10_000_000), _Discard(), limits)
    engine = DetectionEngine(DetectionSettings())
    _build(ingestor, engine, "warm", 10)  # caches and first-use allocations
    ingestor.seen = SeenExecutions(10_000_000)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        _build(ingestor, engine, "p", PIPELINES)
        # The execution ids remembered for deduplication are bounded fleet-wide
        # (server.max_seen_executions), not per pipeline.
        ingestor.seen = SeenExecutions(10)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    kept = sum(stat.size_diff for stat in after.compare_to(before, "lineno"))
    per_pipeline = kept / PIPELINES
    assert len(shards) == PIPELINES + 10
    assert per_pipeline > 8 * 1024, per_pipeline  # the measurement sees the state
    assert per_pipeline <= PIPELINE_MEMORY_BUDGET, (
        f"a pipeline at every default limit takes {per_pipeline / 1024:.1f} KiB, over its "
        f"budget of {PIPELINE_MEMORY_BUDGET / 1024:.0f} KiB"
    )
