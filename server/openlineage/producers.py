"""Which pipelines write each dataset: the map that turns dataset lineage into upstream pipelines.

A pipeline that writes a dataset is upstream of the pipelines that read it. Writers are learned
from OpenLineage events' outputs and must outlive a restart (a reader's next run may come after
one), so the map is kept in `<data-dir>/lineage/producers.jsonl`: one JSON line per new
(dataset, producer) pair, appended and fsynced before the event that taught it is answered.
The map changes only when a dataset gets a new writer, so in steady state nothing is written.

It is kept apart from the write-ahead log on purpose: the executions logged already carry the
upstream ids computed from it, so replaying the log never needs the map, and the map never
needs the log; a pair learned from an event whose answer was lost is harmless (the runner
sends the event again). On start the file is read whole (a torn last line, from a crash in the
middle of an append, is dropped with a warning) and rewritten compactly when it has grown (to a
`.tmp` file renamed over it; a rewrite that fails removes its `.tmp`, and a start removes one a
crash left).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from server.errors import DiskError, LogError, is_disk_error
from server.openlineage.mapping import DatasetKey

__all__ = ["MAX_PRODUCERS_PER_DATASET", "DatasetProducers"]

log = logging.getLogger(__name__)

MAX_PRODUCERS_PER_DATASET = 8
"""Writers remembered per dataset; the one learned longest ago is forgotten beyond that."""

FILE_NAME = "producers.jsonl"


class DatasetProducers:
    """The dataset -> writers map, durable in one append-only file."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self._map: dict[DatasetKey, list[str]] = {}
        self._pending: list[bytes] = []
        self._lock = asyncio.Lock()
        self.on_disk_error: Callable[[DiskError], None] | None = None
        """Told when a write fails for want of space or of a working disk (the server stops)."""

    def __len__(self) -> int:
        return len(self._map)

    def producers_of(self, dataset: DatasetKey) -> Sequence[str]:
        """The pipelines known to write `dataset`, oldest first."""
        return self._map.get(dataset, ())

    def record(self, producer: str, datasets: Iterable[DatasetKey]) -> bool:
        """Remember that `producer` writes `datasets`; True when that is news, which `flush`
        then makes durable."""
        new = False
        for dataset in datasets:
            if self._learn(dataset, producer):
                line = {"namespace": dataset[0], "name": dataset[1], "producer": producer}
                self._pending.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                new = True
        return new

    async def flush(self) -> None:
        """Return once everything recorded before the call is on disk (fsynced); LogError
        when it cannot be written (what was not written is tried again by the next flush)."""
        async with self._lock:
            if not self._pending:
                return
            lines, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._append, b"".join(lines))
            except OSError as e:
                self._pending[:0] = lines
                if is_disk_error(e):
                    error = DiskError(self.path, e, "the dataset producers were not written")
                    if self.on_disk_error is not None:
                        self.on_disk_error(error)
                    raise error from e
                raise LogError(f"cannot write the dataset producers to {self.path}: {e}") from e

    def load(self) -> None:
        """Read the file (blocking: at start, before serving)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._map = {}
        _remove(self.path.with_name(FILE_NAME + ".tmp"))  # a rewrite a crash cut short
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: empty unless an append was torn
        if tail:
            log.warning("%s: cutting a torn last line (%d bytes)", self.path, len(tail))
        kept = 0
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                dataset = (str(entry["namespace"]), str(entry["name"]))
                producer = str(entry["producer"])
            except (ValueError, KeyError, TypeError):
                log.warning("%s: line %d is not a producer entry; skipping it", self.path, number)
                continue
            self._learn(dataset, producer)
            kept += 1
        entries = sum(len(v) for v in self._map.values())
        if tail or kept != len(lines) or kept > 2 * entries + 1000:
            try:
                self._rewrite()
            except OSError as e:
                if not tail:  # the file as it is reads the same: compacting it can wait
                    log.warning("%s: not compacted (%s); it is read as it is", self.path, e)
                    return
                # The next append must not run on from the torn line; cutting it needs no space.
                log.warning("%s: not compacted (%s); cutting its torn line in place", self.path, e)
                _truncate(self.path, len(data) - len(tail))

    def _learn(self, dataset: DatasetKey, producer: str) -> bool:
        known = self._map.get(dataset)
        if known is None:
            self._map[dataset] = [producer]
            return True
        if producer in known:
            return False
        known.append(producer)
        if len(known) > MAX_PRODUCERS_PER_DATASET:
            del known[0]
        return True

    def _append(self, data: bytes) -> None:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.directory)

    def _rewrite(self) -> None:
        tmp = self.path.with_name(FILE_NAME + ".tmp")
        try:
            with tmp.open("wb") as f:
                for (namespace, name), producers in self._map.items():
                    for producer in producers:
                        line = {"namespace": namespace, "name": name, "producer": producer}
                        f.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.path)
        except BaseException:
            _remove(tmp)
            raise
        _fsync_dir(self.directory)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
