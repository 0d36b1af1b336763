"""Lineage: which pipelines feed which, and the root cause of an alert along them.

Edges come from `upstream_pipeline_ids` as each pipeline last reported them. Every walk keeps a
visited set, so cycles end; a diamond (two paths to one upstream) visits it once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator

__all__ = ["Lineage", "root_causes"]


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


def root_causes(
    lineage: Lineage, open_: Collection[str], of: Collection[str] | None = None
) -> dict[str, str]:
    """The root cause of each pipeline of `of` (default: all of `open_`, the pipelines with open
    alerts, which `of` should be among): the upstream pipeline whose open alert explains its
    own, or "" when none does.

    The root is the top of the chain of open alerts above a pipeline: an upstream pipeline with
    an open alert and no open alert upstream of it; the nearest such root wins, then the
    smallest id. Pipelines on a cycle share one root: the one above the cycle if there is one,
    else the smallest id on the cycle with an open alert, so exactly one member is not explained
    by another.

    One walk up from the pipelines asked about and one pass over the strongly connected
    components of what it reaches, upstream first: linear in that part of the graph, whatever
    its shape.
    """
    asked = open_ if of is None else of
    reached = _upstream_closure(lineage, asked)
    components = _components(reached, lineage.upstream)
    component_of = {node: i for i, members in enumerate(components) for node in members}
    # Per component: its smallest open member, and the (distance, root) explaining its members.
    top_open: list[str] = []
    cause: list[tuple[int, str] | None] = []
    for i, members in enumerate(components):
        best: tuple[int, str] | None = None
        for node in members:
            for up in lineage.upstream(node):
                j = component_of.get(up)
                if j is None or j == i:
                    continue
                above = cause[j]
                candidate = (above[0] + 1, above[1]) if above else (1, top_open[j])
                if candidate[1] and (best is None or candidate < best):
                    best = candidate
        cause.append(best)
        top_open.append(min((m for m in members if m in open_), default=""))
    out: dict[str, str] = {}
    for pid in asked:
        i = component_of[pid]
        found = cause[i]
        if found is not None:
            out[pid] = found[1]
        else:
            out[pid] = "" if top_open[i] == pid else top_open[i]
    return out


def _upstream_closure(lineage: Lineage, start: Iterable[str]) -> set[str]:
    """`start` and everything upstream of it."""
    seen: set[str] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(u for u in lineage.upstream(node) if u not in seen)
    return seen


def _components(nodes: set[str], upstream: Callable[[str], tuple[str, ...]]) -> list[list[str]]:
    """The strongly connected components among `nodes` (Tarjan's algorithm, without recursion),
    each listed after every component upstream of it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[str, Iterator[str]]] = [(root, iter(upstream(root)))]
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in nodes:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(upstream(nxt))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    members = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        members.append(member)
                        if member == node:
                            break
                    out.append(members)
    return out
