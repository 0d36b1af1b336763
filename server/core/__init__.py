"""The domain of ingestion: executions, their validation, the sharded state, exactly-once
bookkeeping, and the ingestor that decides, applies and logs each request.
"""

from pipewarden.server.core import compiled

# Before any module of the room is imported: the hot path's compiled modules, when a build of the
# current sources is there (see server/core/compiled.py).
compiled.activate(__path__)
