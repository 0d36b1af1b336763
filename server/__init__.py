"""The Pipewarden server: ingestion, sharded state, the event log and the gRPC service."""

from server import compiled

# Before any other module of the package is imported: the hot path's compiled modules, when a
# build of the current sources is there (see server/compiled.py).
compiled.activate(__path__)
