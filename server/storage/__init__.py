"""Durable bytes: the event-log seam, the write-ahead log that puts it on disk, and the file
helpers (lock files, read-only maps). Knows nothing of pipelines or alerts.
"""
