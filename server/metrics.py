"""Pipewarden's own Prometheus metrics (process-wide, in the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["DUPLICATES", "EXECUTIONS", "PIPELINES", "REJECTED", "REQUESTS", "RUNNING_EVENTS"]

REQUESTS = Counter("pipewarden_ingest_requests", "Ingest requests processed.")
EXECUTIONS = Counter("pipewarden_executions_accepted", "Terminal executions newly counted.")
DUPLICATES = Counter("pipewarden_executions_duplicate", "Terminal executions already counted.")
REJECTED = Counter("pipewarden_executions_rejected", "Executions refused as invalid.")
RUNNING_EVENTS = Counter("pipewarden_running_events", "RUNNING events received.")
PIPELINES = Gauge("pipewarden_pipelines", "Pipelines known.")
