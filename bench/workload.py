"""Realistic execution events, encoded straight to IngestRequest bytes.

A `Fleet` is a set of pipelines spread over teams, each with two labels and a profile (usual
duration, usual record count, failure habits). Every event gets a fresh 36-character UUID-like
execution id, started/finished times that move forward run by run, records, now and then
upstream pipeline ids and, when it failed, an error message.

Events are assembled from pre-encoded pieces in the protobuf wire format (fields may come in any
order on the wire), which is several times faster than building messages, so a section can make
hundreds of thousands of distinct events in a second or two. `check_request` decodes a request
with the generated classes and checks what it says, so the encoding cannot drift unnoticed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence

from pipewarden.v1 import service_pb2

__all__ = ["TEAMS", "Fleet", "check_request", "varint"]

TEAMS = (
    "payments", "growth", "search", "ads", "ml-platform",
    "data-eng", "finance", "risk", "logistics", "marketing",
)  # fmt: skip

_ERRORS = (
    "Task exited with return code 1",
    "java.lang.OutOfMemoryError: Java heap space (executor 17 lost)",
    "psycopg2.OperationalError: could not connect to server: Connection timed out",
    "dbt: Database Error in model orders_daily: relation analytics.stg_orders does not exist",
    "FileNotFoundError: s3://lake/raw/events/dt=2024-05-01/part-0000.parquet",
    "SLA miss: upstream partition not available after 3 retries",
)
_PERIOD_MS = 600_000
"""Time between two runs of a pipeline."""
_KINDS = ("etl", "dbt", "spark", "export", "ingest", "report", "features", "sync")


def varint(n: int) -> bytes:
    """`n` (not negative) as a protobuf varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def _str_field(tag: int, text: str) -> bytes:
    return _len_field(tag, text.encode())


# Tags (field number << 3 | wire type) of PipelineExecution and IngestRequest.
_EXECUTION_ID, _PIPELINE_ID, _TEAM, _STATUS = 0x0A, 0x12, 0x1A, 0x20
_STARTED_AT, _FINISHED_AT, _DURATION, _RECORDS = 0x2A, 0x32, 0x3A, 0x40
_UPSTREAM, _LABELS, _ERROR_MESSAGE = 0x4A, 0x52, 0x5A
_EXECUTIONS = 0x0A
_SUCCEEDED, _FAILED, _CANCELLED = 1, 2, 4


def _time_field(tag: int, ms: int) -> bytes:
    """A google.protobuf.Timestamp (or Duration) field of `ms` milliseconds."""
    seconds, rest = divmod(ms, 1000)
    inner = b"\x08" + varint(seconds)
    if rest:
        inner += b"\x10" + varint(rest * 1_000_000)
    return bytes((tag, len(inner))) + inner


class Fleet:
    """Pipelines that make realistic, never-repeating execution events."""

    def __init__(
        self,
        pipelines: int,
        *,
        prefix: str = "",
        teams: int = 10,
        profiles: int = 512,
        variants: int = 8,
        seed: int = 1,
    ) -> None:
        self.size = pipelines
        rng = random.Random(seed)
        # Ids come from an unseeded generator: they must never repeat across fleets or runs.
        self._ids = random.Random()
        team_names = [
            TEAMS[i % len(TEAMS)] + ("" if i < len(TEAMS) else f"-{i}") for i in range(teams)
        ]
        self.teams = team_names
        self.pipeline_ids = [
            f"{team_names[i % teams]}.{prefix}{_KINDS[(i // teams) % len(_KINDS)]}_{i:06d}"
            for i in range(pipelines)
        ]
        self.team_of = [team_names[i % teams] for i in range(pipelines)]
        label_sets = [
            _len_field(_LABELS, _str_field(0x0A, "env") + _str_field(0x12, env))
            + _len_field(_LABELS, _str_field(0x0A, "tier") + _str_field(0x12, tier))
            for env in ("prod", "staging")
            for tier in ("gold", "silver", "bronze")
        ]
        self._head = [
            _str_field(_PIPELINE_ID, pid) + _str_field(_TEAM, team)
            for pid, team in zip(self.pipeline_ids, self.team_of, strict=True)
        ]
        self._labels = [label_sets[(i * 7) % len(label_sets)] for i in range(pipelines)]
        upstream_pool = self.pipeline_ids[: min(pipelines, 1000)]
        self._variants = variants
        self._profiles = profiles
        # tails[profile * variants + variant] = (status..upstream bytes, duration ms, error bytes)
        self._tails: list[tuple[bytes, int, bytes]] = []
        for _ in range(profiles):
            usual_ms = int(rng.lognormvariate(11.0, 1.2))  # about 1 minute to a few hours
            usual_records = int(rng.lognormvariate(10.0, 2.0))
            failure_rate = rng.choice((0.0, 0.02, 0.05, 0.1, 0.3))
            for _ in range(variants):
                roll = rng.random()
                status = (
                    _FAILED
                    if roll < failure_rate
                    else _CANCELLED
                    if roll < failure_rate + 0.02
                    else _SUCCEEDED
                )
                ms = max(1, int(usual_ms * rng.uniform(0.7, 1.4)))
                records = int(usual_records * rng.uniform(0.8, 1.2))
                if status != _SUCCEEDED:
                    ms, records = int(ms * rng.uniform(0.1, 1.0)), records // 3
                tail = bytes((_STATUS, status))
                if rng.random() < 0.5:  # half the runners also send the duration
                    tail += _time_field(_DURATION, ms)
                tail += bytes((_RECORDS,)) + varint(records)
                if rng.random() < 0.2:
                    for up in rng.sample(upstream_pool, min(len(upstream_pool), rng.randint(1, 2))):
                        tail += _str_field(_UPSTREAM, up)
                error = (
                    _str_field(_ERROR_MESSAGE, rng.choice(_ERRORS)) if status == _FAILED else b""
                )
                self._tails.append((tail, ms, error))
        # Runs of a pipeline are PERIOD apart, starting 60 days ago at a per-pipeline offset:
        # over 8,000 runs of every pipeline before their times reach the present.
        self._base_ms = (int(time.time()) - 60 * 86_400) * 1000
        self._offset_ms = [rng.randrange(_PERIOD_MS) for _ in range(pipelines)]
        self._runs = [0] * pipelines

    def execution(self, p: int) -> bytes:
        """The encoded PipelineExecution of pipeline `p`'s next run, with a fresh id."""
        k = self._runs[p]
        self._runs[p] = k + 1
        tail, ms, error = self._tails[
            (p % self._profiles) * self._variants + (k * 5 + p) % self._variants
        ]
        started = self._base_ms + self._offset_ms[p] + k * _PERIOD_MS
        h = f"{self._ids.getrandbits(128):032x}"
        eid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()
        return b"".join(
            (
                b"\x0a\x24",  # execution_id, 36 bytes
                eid,
                self._head[p],
                _time_field(_STARTED_AT, started),
                _time_field(_FINISHED_AT, started + ms),
                tail,
                self._labels[p],
                error,
            )
        )

    def requests(self, order: Iterable[int], size: int) -> list[bytes]:
        """IngestRequests of `size` executions (the last may be smaller), one execution of
        pipeline `p` for each `p` in `order`."""
        out: list[bytes] = []
        batch: list[bytes] = []
        for p in order:
            e = self.execution(p)
            batch.append(b"\x0a" + varint(len(e)) + e)
            if len(batch) == size:
                out.append(b"".join(batch))
                batch = []
        if batch:
            out.append(b"".join(batch))
        return out

    def random_order(self, count: int, seed: int) -> list[int]:
        """`count` pipeline indices drawn at random (the mix a busy fleet sends)."""
        rng = random.Random(seed)
        return [rng.randrange(self.size) for _ in range(count)]


def check_request(raw: bytes, fleet: Fleet) -> int:
    """Decode `raw` with the generated classes, check its executions make sense; return how many
    it holds. Raises AssertionError when the hand encoding went wrong."""
    request = service_pb2.IngestRequest.FromString(raw)
    team_of = dict(zip(fleet.pipeline_ids, fleet.team_of, strict=True))
    for e in request.executions:
        assert len(e.execution_id) == 36, e.execution_id
        assert team_of[e.pipeline_id] == e.team, (e.pipeline_id, e.team)
        assert e.status in (_SUCCEEDED, _FAILED, _CANCELLED), e.status
        assert e.HasField("started_at") and e.HasField("finished_at")
        assert e.finished_at.ToNanoseconds() >= e.started_at.ToNanoseconds()
        assert len(e.labels) == 2 and set(e.labels) == {"env", "tier"}, dict(e.labels)
        assert e.records_processed >= 0
        assert bool(e.error_message) == (e.status == _FAILED)
        if e.HasField("duration"):
            took = e.finished_at.ToNanoseconds() - e.started_at.ToNanoseconds()
            assert e.duration.ToNanoseconds() == took
    return len(request.executions)


def total_bytes(requests: Sequence[bytes]) -> int:
    """How many bytes the requests hold."""
    return sum(len(r) for r in requests)
