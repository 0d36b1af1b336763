"""OpenLineage ingest: RunEvents posted to /api/v1/lineage become execution events.

`settings` is the configuration section, `mapping` the pure translation of an event, `producers`
the durable map of which pipeline writes which dataset, and `endpoint` the HTTP handler that
puts them together in front of the same Ingestor as gRPC.
"""
