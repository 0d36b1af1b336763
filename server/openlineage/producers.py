"""Which pipelines write each dataset: the map that turns dataset lineage into upstream pipelines.

A pipeline that writes a dataset is upstream of the pipelines that read it. Writers are learned
from OpenLineage events' outputs and must outlive a restart (a reader's next run may come after
one), so the map is kept in `<data-dir>/lineage/producers.jsonl`: one JSON line per new
(dataset, producer) pair with the producer's team, appended and fsynced before the event that
taught it is answered. The map changes only when a dataset gets a new writer, so in steady
state nothing is written.

Bounded so that no team's events can crowd out another's: each team's pipelines may hold at
most `max_per_team` pairs (`check` says why an event would go beyond, and the endpoint refuses
it), and a dataset keeps at most MAX_PRODUCERS_PER_DATASET writers, a newcomer replacing the
oldest writer *of its own team*: a dataset whose writers are all of other teams keeps them, so
claims of one team never push out another team's lineage.

It is kept apart from the write-ahead log on purpose: the executions logged already carry the
upstream ids computed from it, so replaying the log never needs the map, and the map never
needs the log; a pair learned from an event whose answer was lost is harmless (the runner
sends the event again). On start the file is read whole and rewritten compactly when it has
grown (to a `.tmp` file renamed over it; a rewrite that fails removes its `.tmp`, and a start
removes one a crash left); a line that cannot be an entry (a torn last line from a crash in the
middle of an append, bytes that are not UTF-8, text with lone surrogates, wrong types) is dropped
with a warning, so that no line can break the requests that would read it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pipewarden.server.base.errors import DiskError, LogError, is_disk_error
from pipewarden.server.openlineage.mapping import DatasetKey
from pipewarden.server.storage.files import fsync_dir, remove, truncate, write_all

__all__ = ["MAX_PRODUCERS_PER_DATASET", "DatasetProducers"]

log = logging.getLogger(__name__)

MAX_PRODUCERS_PER_DATASET = 8
"""Writers remembered per dataset; beyond that, a new writer replaces the one of its own team
learned longest ago, and is not remembered when the dataset has none of its team."""

FILE_NAME = "producers.jsonl"


class DatasetProducers:
    """The dataset -> writers map, durable in one append-only file."""

    def __init__(self, directory: str | Path, *, max_per_team: int = 50_000) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.max_per_team = max_per_team
        """Most (dataset, producer) pairs kept for the pipelines of one team."""
        self._map: dict[DatasetKey, list[str]] = {}
        self._team_of: dict[str, str] = {}
        """Each producer's team (as first learned), while it writes some dataset."""
        self._entries_of: dict[str, int] = {}
        """Each producer's pairs."""
        self._per_team: dict[str, int] = {}
        """Each team's pairs."""
        self._pending: list[bytes] = []
        self._lock = asyncio.Lock()
        self.on_disk_error: Callable[[DiskError], None] | None = None
        """Told when a write fails for want of space or of a working disk (the server stops)."""

    def __len__(self) -> int:
        return len(self._map)

    def producers_of(self, dataset: DatasetKey) -> Sequence[str]:
        """The pipelines known to write `dataset`, oldest first."""
        return self._map.get(dataset, ())

    def team_count(self, team: str) -> int:
        """The (dataset, producer) pairs kept for `team`'s pipelines."""
        return self._per_team.get(team, 0)

    def check(self, producer: str, team: str, datasets: Iterable[DatasetKey]) -> str | None:
        """Why recording that `producer` (of `team`) writes `datasets` would take its team
        beyond `max_per_team`; None when it fits (or teaches nothing new)."""
        team = self._team_of.get(producer, team)
        new = {d for d in datasets if producer not in self._map.get(d, ())}
        have = self._per_team.get(team, 0)
        if not new or have + len(new) <= self.max_per_team:
            return None
        return (
            f"team {team!r} already has {have} dataset producers on record; {len(new)} more "
            f"would pass its limit of {self.max_per_team} (openlineage.max_datasets_per_team)"
        )

    def record(self, producer: str, datasets: Iterable[DatasetKey], team: str = "") -> bool:
        """Remember that `producer` (of `team`) writes `datasets`; True when that is news,
        which `flush` then makes durable. Call `check` first: this does not."""
        new = False
        team = self._team_of.get(producer, team)
        for dataset in datasets:
            if self._learn(dataset, producer, team):
                line = {
                    "namespace": dataset[0],
                    "name": dataset[1],
                    "producer": producer,
                    "team": team,
                }
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
        remove(self.path.with_name(FILE_NAME + ".tmp"))  # a rewrite a crash cut short
        self._team_of, self._entries_of, self._per_team = {}, {}, {}
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
            entry = _entry(line)
            if entry is None:
                log.warning("%s: line %d is not a producer entry; skipping it", self.path, number)
                continue
            namespace, name, producer, team = entry
            self._learn((namespace, name), producer, team)
            kept += 1
        entries = sum(self._per_team.values())
        if tail or kept != len(lines) or kept > 2 * entries + 1000:
            try:
                self._rewrite()
            except OSError as e:
                if not tail:  # the file as it is reads the same: compacting it can wait
                    log.warning("%s: not compacted (%s); it is read as it is", self.path, e)
                else:
                    # The next append must not run on from the torn line; cutting it needs no
                    # space.
                    log.warning(
                        "%s: not compacted (%s); cutting its torn line in place", self.path, e
                    )
                    truncate(self.path, len(data) - len(tail))
        for team, count in self._per_team.items():
            if count > self.max_per_team:
                log.warning(
                    "team %r has %d dataset producers on record, more than "
                    "openlineage.max_datasets_per_team (%d): they are kept, and its events "
                    "that would add more are refused",
                    team,
                    count,
                    self.max_per_team,
                )

    def _learn(self, dataset: DatasetKey, producer: str, team: str) -> bool:
        known = self._map.get(dataset)
        if known is None:
            self._map[dataset] = [producer]
        elif producer in known:
            return False
        else:
            if len(known) >= MAX_PRODUCERS_PER_DATASET:
                team = self._team_of.get(producer, team)
                mate = next((p for p in known if self._team_of.get(p) == team), None)
                if mate is None:
                    return False  # the writers of other teams keep the dataset
                known.remove(mate)
                self._forget(mate)
            known.append(producer)
        team = self._team_of.setdefault(producer, team)
        self._entries_of[producer] = self._entries_of.get(producer, 0) + 1
        self._per_team[team] = self._per_team.get(team, 0) + 1
        return True

    def _forget(self, producer: str) -> None:
        """One pair of `producer` is gone."""
        team = self._team_of[producer]
        left = self._entries_of[producer] - 1
        if left:
            self._entries_of[producer] = left
        else:
            del self._entries_of[producer], self._team_of[producer]
        count = self._per_team[team] - 1
        if count:
            self._per_team[team] = count
        else:
            del self._per_team[team]

    def _append(self, data: bytes) -> None:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            write_all(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.directory)

    def _rewrite(self) -> None:
        tmp = self.path.with_name(FILE_NAME + ".tmp")
        try:
            with tmp.open("wb") as f:
                for (namespace, name), producers in self._map.items():
                    for producer in producers:
                        line = {
                            "namespace": namespace,
                            "name": name,
                            "producer": producer,
                            "team": self._team_of.get(producer, ""),
                        }
                        f.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.path)
        except BaseException:
            remove(tmp)
            raise
        fsync_dir(self.directory)


def _entry(line: bytes) -> tuple[str, str, str, str] | None:
    """(namespace, name, producer, team) of a line, or None when it is not a valid entry."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(entry, dict):
        return None
    namespace, name, producer = entry.get("namespace"), entry.get("name"), entry.get("producer")
    team = entry.get("team", "")
    if not (
        isinstance(namespace, str)
        and namespace
        and isinstance(name, str)
        and name
        and isinstance(producer, str)
        and producer
        and isinstance(team, str)
    ):
        return None
    try:
        for value in (namespace, name, producer, team):
            value.encode()
    except UnicodeEncodeError:
        return None  # a lone surrogate: no request may carry it on
    return namespace, name, producer, team
