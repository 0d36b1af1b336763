"""Probe pipelines, shared by the alerts and notify sections.

Each probe pipeline is given some failures in a row beforehand; its next failure, kept as a
serialized IngestRequest in STORE, is the probe whose latency a section measures. The fleet that
makes the background load is warmed up first (every pipeline twice), so that pipeline creation
is not part of any measured run.
"""

from __future__ import annotations

import time
from typing import Any

from bench import loadgen
from bench.common import STORE
from bench.workload import Fleet
from pipewarden.client import execution
from pipewarden.v1 import service_pb2

__all__ = ["pipeline", "prepare"]


def pipeline(prefix: str, label: str, i: int) -> str:
    """The id of probe pipeline `i` of the run `label`."""
    return f"{prefix}.{label}.{i:05d}"


def _failure(prefix: str, label: str, i: int, k: int) -> Any:
    t = time.time() - 3600 + k
    return execution(
        f"{prefix}-{label}-{i}-{k}",
        pipeline(prefix, label, i),
        "probes",
        "failed",
        started_at=t - 5,
        finished_at=t,
        error_message="probe",
    )


def prepare(
    target: str,
    prefix: str,
    labels: list[str],
    probes: int,
    failures: int,
    *,
    pipelines: int,
    load_size: int,
) -> dict[str, Any]:
    """Make the fleet of `pipelines` (STORE["fleet"]) and warm it up in requests of `load_size`;
    give each of `probes` probe pipelines of each run in `labels` `failures` failures in a row,
    and keep their next failures as STORE[f"probes-{label}"]."""
    fleet = STORE["fleet"] = Fleet(pipelines)
    warm = fleet.requests([p for _ in range(2) for p in range(pipelines)], load_size)
    loadgen.blast(target, warm, streams=4, max_seconds=60)
    before = [
        service_pb2.IngestRequest(
            executions=[_failure(prefix, label, i, k) for k in range(failures)]
        ).SerializeToString()
        for label in labels
        for i in range(probes)
    ]
    loadgen.blast(target, before, streams=4, max_seconds=60)
    for label in labels:
        STORE[f"probes-{label}"] = [
            service_pb2.IngestRequest(
                executions=[_failure(prefix, label, i, failures)]
            ).SerializeToString()
            for i in range(probes)
        ]
    return {"warmup_requests": len(warm), "probe_pipelines": len(before)}
