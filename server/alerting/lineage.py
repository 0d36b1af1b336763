"""Lineage: which pipelines feed which, and the root cause of an alert along them.

Edges come from `upstream_pipeline_ids` as each pipeline last reported them. Every walk keeps a
visited set, so cycles end; a diamond (two paths to one upstream) visits it once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["Lineage", "root_cause"]


class Lineage:
    """The dependency graph, both ways: upstream as reported, downstream as its inverse."""

    def __init__(self) -> None:
        self._upstream: dict[str, tuple[str, ...]] = {}
        self._downstream: dict[str, set[str]] = {}

    def update(self, pipeline_id: str, upstream: tuple[str, ...]) -> bool:
        """Record `pipeline_id`'s upstream pipelines; True when they changed."""
        before = self._upstream.get(pipeline_id, ())
        if before == upstream:
            return False
        for u in before:
            children = self._downstream.get(u)
            if children is not None:
                children.discard(pipeline_id)
                if not children:
                    del self._downstream[u]
        for u in upstream:
            if u != pipeline_id:
                self._downstream.setdefault(u, set()).add(pipeline_id)
        if upstream:
            self._upstream[pipeline_id] = upstream
        else:
            self._upstream.pop(pipeline_id, None)
        return True

    def upstream(self, pipeline_id: str) -> tuple[str, ...]:
        """The pipelines `pipeline_id` reads from."""
        return self._upstream.get(pipeline_id, ())

    def ancestors(self, pipeline_id: str) -> dict[str, int]:
        """Every pipeline upstream of `pipeline_id`, transitively, with its distance in hops."""
        return _walk(pipeline_id, self.upstream)

    def descendants(self, pipeline_id: str) -> dict[str, int]:
        """Every pipeline downstream of `pipeline_id`, transitively, with its distance."""
        return _walk(pipeline_id, lambda p: self._downstream.get(p, ()))


def _walk(start: str, neighbours: Callable[[str], Iterable[str]]) -> dict[str, int]:
    """Breadth-first from `start` (excluded): each reachable node once, at its shortest distance."""
    found: dict[str, int] = {}
    queue = deque([(start, 0)])
    while queue:
        node, distance = queue.popleft()
        for nxt in neighbours(node):
            if nxt != start and nxt not in found:
                found[nxt] = distance + 1
                queue.append((nxt, distance + 1))
    return found


def root_cause(pipeline_id: str, lineage: Lineage, is_open: Callable[[str], bool]) -> str:
    """The upstream pipeline whose open alert explains `pipeline_id`'s alerts; "" when none.

    The root is the top of the chain of open alerts above the pipeline: an upstream pipeline
    with an open alert and no open alert upstream of it. The nearest such root wins, then the
    smallest id. Pipelines on a cycle of open alerts share one root, the smallest id among
    them, so exactly one member of the cycle is not explained by another (and when that is
    `pipeline_id` itself, the answer is "").
    """
    alerting = {p: d for p, d in lineage.ancestors(pipeline_id).items() if is_open(p)}
    found: list[tuple[int, str]] = []
    for candidate, distance in alerting.items():
        above = [a for a in lineage.ancestors(candidate) if is_open(a)]
        below = lineage.descendants(candidate)
        if any(a not in below for a in above):
            continue  # an open alert further up, not on a cycle with it: not a root
        cycle = [candidate, *(a for a in above if a in below)]
        found.append((distance, min(cycle)))
    if not found:
        return ""
    root = min(found)[1]
    return "" if root == pipeline_id else root
