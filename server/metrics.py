"""Pipewarden's own Prometheus metrics (process-wide, in the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
