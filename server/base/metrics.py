"""Pipewarden's own Prometheus metrics (process-wide, in the default registry).

Counters and histograms of what happens, updated where it happens, belong here. Values read from
a node's state at scrape time (queue depths, pipeline and team health, alerts firing) are
collectors on the node's own registry instead: see server/api/collector.py for that pattern.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ALERTS_OPEN",
    "ALERT_EVENTS",
    "ALERT_WATCHERS",
    "DUPLICATES",
    "EXECUTIONS",
    "PIPELINES",
    "REJECTED",
    "REQUESTS",
    "RUNNING_EVENTS",
]

REQUESTS = Counter("pipewarden_ingest_requests", "Ingest requests processed.")
EXECUTIONS = Counter("pipewarden_executions_accepted", "Terminal executions newly counted.")
DUPLICATES = Counter("pipewarden_executions_duplicate", "Terminal executions already counted.")
REJECTED = Counter("pipewarden_executions_rejected", "Executions refused as invalid.")
RUNNING_EVENTS = Counter("pipewarden_running_events", "RUNNING events received.")
PIPELINES = Gauge("pipewarden_pipelines", "Pipelines known.")
ALERTS_OPEN = Gauge("pipewarden_alerts_open", "Alerts firing or acknowledged.")
ALERT_EVENTS = Counter("pipewarden_alert_events", "Alert events, by type.", ["type"])
ALERT_WATCHERS = Gauge("pipewarden_alert_watchers", "Open WatchAlerts streams.")

# -- the ecosystem issue: storage latencies and OpenLineage ------------------------------------
__all__ += ["LOG_FSYNC_SECONDS", "OPENLINEAGE_EVENTS", "SNAPSHOT_SECONDS"]

LOG_FSYNC_SECONDS = Histogram(
    "pipewarden_log_fsync_seconds",
    "Time of one fdatasync of the write-ahead log.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SNAPSHOT_SECONDS = Histogram(
    "pipewarden_snapshot_seconds",
    "Time to write one snapshot, from start to rename.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
OPENLINEAGE_EVENTS = Counter(
    "pipewarden_openlineage_events",
    "OpenLineage events received on POST /api/v1/lineage, by event type and outcome "
    "(accepted, running, duplicate, ignored, rejected).",
    ["event_type", "outcome"],
)
