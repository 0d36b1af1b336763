"""A fixed ingestion workload through the hot path; prints a digest of everything it decided.

`python -m tests.hot_path_workload`: run by tests/test_compiled.py once as pure Python and once
on the compiled build, which must decide and keep exactly the same.
"""

from __future__ import annotations

import hashlib
import itertools
import random

from pipewarden.server.core import compiled
from pipewarden.server.core.dedup import ImageBuilder, SeenExecutions
from pipewarden.server.core.ingest import Ingestor
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.shards import ShardSet
from pipewarden.server.storage.eventlog import MemoryLog
from pipewarden.v1 import execution_pb2, service_pb2
from tests.support.helpers import T0, run

STATUSES = ("succeeded", "failed", "cancelled", "running")


def events(rng: random.Random, count: int) -> list[execution_pb2.PipelineExecution]:
    """Executions of 40 pipelines of 3 teams, out of time order, with repeats and bad ones."""
    out = []
    for _ in range(count):
        n = rng.randrange(count)
        eid = f"e{n}"  # about a third repeat an earlier id, mostly of the same pipeline
        p = n % 40 if rng.random() > 0.1 else rng.randrange(40)
        start = T0 + rng.uniform(-3600, 3600)
        if rng.random() < 0.005:
            start += 10 * 86400  # beyond the allowed skew ahead of the clock: rejected
        msg = run(
            eid,
            pipeline_id=f"p{p}",
            team=f"team-{p % 3}" if rng.random() > 0.01 else "team-x",  # some change team
            status=rng.choice(STATUSES),
            start=start if rng.random() > 0.05 else None,
            duration=rng.choice((None, rng.uniform(0, 600))),
            records=rng.randrange(0, 10_000) if rng.random() > 0.01 else -1,
        )
        if rng.random() < 0.2:
            msg.labels["tier"] = rng.choice(("gold", "silver"))
        if rng.random() < 0.1:
            msg.upstream_pipeline_ids.append(f"p{rng.randrange(40)}")
        if msg.status == execution_pb2.EXECUTION_STATUS_FAILED:
            msg.error_message = rng.choice(("timeout", "OOM", "x" * 3000))
        out.append(msg)
    return out


def main() -> None:
    rng = random.Random(20261204)
    shards = ShardSet(4, 16)
    seen = SeenExecutions(500, retention_seconds=1800)
    log = MemoryLog()
    ticks = itertools.count()
    # Each request a minute after the one before: ids received 30 minutes ago are forgotten.
    ingestor = Ingestor(
        shards, seen, log, IngestLimits(), clock=lambda: T0 + 7200 + 60 * next(ticks)
    )
    digest = hashlib.sha256()
    batch = events(rng, 3000)
    totals = [0, 0, 0, 0]
    settling = iter(())
    for n, start in enumerate(range(0, len(batch), 50)):
        if n == 20:  # a snapshot's compact form of the ids, and a restart onto it
            builder = ImageBuilder(seen)
            for _ in builder.steps(step=64):
                pass
            image = builder.result
            for part in (
                image.blob,
                image.starts,
                image.hashes,
                image.table,
                image.times,
                image.teams,
            ):
                digest.update(bytes(part) if isinstance(part, bytes) else repr(part).encode())
            seen.restore(image)
        elif n == 35:  # the restored ids half moved into the live set, the rest later
            settling = seen.settle(step=64)
            for _ in range(2):
                next(settling, None)
        elif n == 50:
            for _ in settling:
                pass
        request = service_pb2.IngestRequest(executions=batch[start : start + 50])
        outcome, seq = ingestor.ingest(request.SerializeToString(), request)
        digest.update(repr((outcome, seq)).encode())
        counts = (outcome.accepted, outcome.duplicates, outcome.running, len(outcome.rejected))
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
    # The same log replayed into a fresh state must decide the same again.
    replayed = ShardSet(4, 16)
    again = Ingestor(
        replayed, SeenExecutions(500, retention_seconds=1800), MemoryLog(), IngestLimits()
    )
    for _, payload in log.read(0):
        again.replay(payload)  # through server/core/wire.py where it can
    digest.update(repr(list(again.seen)).encode())
    for state in (shards, replayed):
        for shard in state.dump():
            digest.update(shard.SerializeToString(deterministic=True))
    digest.update(repr(list(seen)).encode())
    print(compiled.status())
    print("accepted {} duplicates {} running {} rejected {}".format(*totals))
    print(digest.hexdigest())


if __name__ == "__main__":
    main()
