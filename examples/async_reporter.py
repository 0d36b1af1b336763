"""An asyncio service that streams many executions through the buffered AsyncReporter.

    python examples/async_reporter.py [HOST:PORT]

The reporter batches (here up to 200 executions or 0.2 s) over one open StreamIngest stream,
retries with backoff while the server is unavailable, and resends what was not acknowledged.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from pipewarden.client import AsyncReporter, execution


async def main(target: str) -> None:
    async with AsyncReporter(target, team="ingest", batch_size=200, flush_interval=0.2) as reporter:
        now = time.time()
        for i in range(1000):
            status = "failed" if i % 50 == 0 else "succeeded"
            reporter.report(
                execution(
                    str(uuid.uuid4()),
                    f"ingest.topic-{i % 10}",
                    "ingest",
                    status,
                    started_at=now - 30,
                    finished_at=now,
                    records=1000 + i,
                    error_message="broker unreachable" if status == "failed" else "",
                )
            )
            if i % 100 == 0:
                await asyncio.sleep(0)  # a real service does its own work here
        ok = await reporter.flush(timeout=10)
        s = reporter.stats
        print(f"flushed={ok} accepted={s.accepted} duplicates={s.duplicates} dropped={s.dropped}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"))
