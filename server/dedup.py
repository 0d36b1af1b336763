"""Which terminal executions have been counted, for exactly-once counting by execution_id."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

__all__ = ["SeenExecutions"]


class SeenExecutions:
    """The execution ids already counted, forgetting the oldest beyond `capacity`.

    A set answers membership; a deque remembers arrival order for forgetting. An id costs its
    string, a set slot and a deque slot (about 130 bytes for a 36-character UUID).
    """

    __slots__ = ("_ids", "_order", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        """The ids, oldest first."""
        return iter(self._order)

    def add(self, execution_id: str) -> None:
        """Remember an id (not already present)."""
        self._ids.add(execution_id)
        self._order.append(execution_id)
        if len(self._order) > self.capacity:
            self._ids.discard(self._order.popleft())

    def restore(self, ids: Iterable[str]) -> None:
        """Replace the contents with `ids`, oldest first."""
        self._ids.clear()
        self._order.clear()
        for execution_id in ids:
            self.add(execution_id)
