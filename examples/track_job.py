"""A Python job that reports its runs to Pipewarden: two lines, the reporter and the decorator.

    pipewarden serve &                     # or: make run
    python examples/track_job.py [HOST:PORT]

Each call of `settle` is one run: RUNNING when it starts, then SUCCEEDED with its duration and
the records it set, or FAILED with the error. The reporter buffers and sends in the background,
and flushes when the interpreter exits, so a Pipewarden that is down never stalls the job.
"""

from __future__ import annotations

import random
import sys
import time

from pipewarden.client import Reporter, current_run

reporter = Reporter(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051", team="payments")


@reporter.track("payments.settle")
def settle(batch: int) -> None:
    """Pretend to settle a batch of payments."""
    time.sleep(random.uniform(0.01, 0.05))
    if batch == 3:
        raise RuntimeError("the ledger is locked")
    current_run().records = 100 * batch


def main() -> None:
    for batch in range(1, 6):
        try:
            settle(batch)
        except RuntimeError as e:
            print(f"batch {batch} failed: {e}")
    # A block can be a run too.
    with reporter.track("payments.reconcile") as run:
        run.records = 7
    # Exiting flushes the reporter (at most its close_timeout, 5 s by default).
    print(f"reported {reporter.stats.reported} events")


if __name__ == "__main__":
    main()
