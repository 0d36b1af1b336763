"""The notifiers' Prometheus metrics (process-wide, in the default registry, so the server's
/metrics serves them). Labelled by receiver name."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ATTEMPTS_FAILED",
    "CATCH_UPS",
    "CAUGHT_UP",
    "DEAD_LETTERS",
    "DEDUPLICATED",
    "DELIVERY_SECONDS",
    "OUTBOX_PENDING",
    "QUEUE_DEPTH",
    "SENT",
    "SUPPRESSED",
    "UNROUTED",
]

SENT = Counter(
    "pipewarden_notifications_sent", "Notifications the receiver accepted.", ["receiver"]
)
ATTEMPTS_FAILED = Counter(
    "pipewarden_notification_attempts_failed",
    "Delivery attempts that failed (each retry counts).",
    ["receiver", "retriable"],
)
DEAD_LETTERS = Counter(
    "pipewarden_notifications_dead_letters",
    "Notifications given up on and written to the dead letters.",
    ["receiver"],
)
DEDUPLICATED = Counter(
    "pipewarden_notifications_deduplicated",
    "Notifications not sent because the receiver was told the same within its repeat interval.",
    ["receiver"],
)
SUPPRESSED = Counter(
    "pipewarden_notifications_suppressed", "Alert events submitted with notify=False."
)
UNROUTED = Counter("pipewarden_notifications_unrouted", "Alert events that no route sent anywhere.")
QUEUE_DEPTH = Gauge(
    "pipewarden_notification_queue_depth", "Notifications waiting for a receiver.", ["receiver"]
)
OUTBOX_PENDING = Gauge(
    "pipewarden_notification_outbox_pending", "Notifications written and not yet settled."
)
DELIVERY_SECONDS = Histogram(
    "pipewarden_notification_delivery_seconds",
    "From submit to the receiver's acceptance.",
    ["receiver"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CATCH_UPS = Counter(
    "pipewarden_notification_catch_ups",
    "Times the server caught the notifiers up with the alerts' state: at start, at stop, and "
    "when their alert feed fell behind (overflow).",
    ["reason"],
)
CAUGHT_UP = Counter(
    "pipewarden_notifications_caught_up",
    "Notifications queued by catching up: what receivers would otherwise have missed.",
    ["reason"],
)
