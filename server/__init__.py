"""The Pipewarden server: ingestion, sharded state, the event log and the gRPC service."""
