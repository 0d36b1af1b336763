"""Lineage: which pipelines feed which, and the root cause of an alert along them.

Edges come from `upstream_pipeline_ids` as each pipeline last reported them, whatever taught
them: a runner over gRPC, or OpenLineage (the producers of a run's inputs, its job dependencies,
its parent). Every walk keeps a visited set, so cycles end; a diamond (two paths to one
upstream) visits it once.

Trust is decided here, once for every source: an edge from a pipeline to an upstream one is
*trusted* when the downstream pipeline's team trusts the upstream pipeline's team (a team always
trusts itself; `alerts.trusted_teams` adds others). Only trusted edges explain, and so mute, an
alert; an untrusted one (another team's pipeline, perhaps named as the producer of a dataset by
a claim of that other team) can only be shown as a likely cause while the alert still notifies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

__all__ = ["ANY_TEAM", "Lineage", "TeamTrust", "root_causes"]

ANY_TEAM = "*"
"""In `alerts.trusted_teams`: as a key, every team; in a list, every team is trusted."""


class TeamTrust:
    """Whose alerts may explain (and mute) whose: `trusted[team]` lists the other teams whose
    upstream pipelines may explain `team`'s alerts, ANY_TEAM standing for every team."""

    def __init__(self, trusted: Mapping[str, Collection[str]] | None = None) -> None:
        self._trusted = {team: frozenset(others) for team, others in (trusted or {}).items()}
        self._everyone = self._trusted.get(ANY_TEAM, frozenset())

    def __call__(self, downstream_team: str, upstream_team: str) -> bool:
        """Whether `downstream_team` trusts `upstream_team`'s pipelines (and the lineage they
        and their team claim) to explain its alerts. An unknown team ("") is not trusted."""
        if not downstream_team or not upstream_team:
            return False
        if downstream_team == upstream_team:
            return True
        own = self._trusted.get(downstream_team, frozenset())
        return any(upstream_team in teams or ANY_TEAM in teams for teams in (own, self._everyone))


def _trust_all(downstream_team: str, upstream_team: str) -> bool:
    return True


class Lineage:
    """The dependency graph, both ways: upstream as reported, downstream as its inverse; and
    each pipeline's team, for the trust rule."""

    def __init__(self, trust: Callable[[str, str], bool] = _trust_all) -> None:
        self.trust = trust
        """`trust(downstream_team, upstream_team)`: whether an edge between them is trusted.
        The default trusts every edge (the pure graph, as in tests of the rule)."""
        self._upstream: dict[str, tuple[str, ...]] = {}
        self._downstream: dict[str, set[str]] = {}
        self._teams: dict[str, str] = {}

    def update(self, pipeline_id: str, upstream: tuple[str, ...], team: str = "") -> bool:
        """Record `pipeline_id`'s upstream pipelines (and its team, when given); True when
        either changed."""
        before = self._upstream.get(pipeline_id, ())
        team_changed = bool(team) and self._teams.get(pipeline_id) != team
        if team_changed:
            self._teams[pipeline_id] = team
            # Which edges are trusted changes only for a pipeline on some edge.
            team_changed = bool(before) or pipeline_id in self._downstream
        if before == upstream:
            return team_changed
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
        """The pipelines `pipeline_id` reads from, as reported."""
        return self._upstream.get(pipeline_id, ())

    def trusted_upstream(self, pipeline_id: str) -> tuple[str, ...]:
        """The pipelines `pipeline_id` reads from whose team its team trusts: the only edges
        along which an upstream alert explains (and mutes) a downstream one."""
        upstream = self._upstream.get(pipeline_id, ())
        if not upstream or self.trust is _trust_all:
            return upstream
        team = self._teams.get(pipeline_id, "")
        return tuple(u for u in upstream if self.trust(team, self._teams.get(u, "")))

    def team_of(self, pipeline_id: str) -> str:
        """The team of a pipeline seen by `update`; "" when unknown."""
        return self._teams.get(pipeline_id, "")

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
    lineage: Lineage,
    open_: Collection[str],
    *,
    rank: Callable[[str], Any] = str,
    known: Callable[[str], str | None] | None = None,
    of: Collection[str] | None = None,
    trusted: bool = True,
) -> dict[str, str]:
    """The root cause of each pipeline of `of` (default: every one of `open_`, the pipelines
    with open alerts): the upstream pipeline whose open alert explains its own, or "" when none
    does.

    The rule: a pipeline is explained by the nearest upstream pipelines with an open alert
    along each path (those reached through pipelines without one), and its root is what
    explains *them*, or they themselves when nothing does; between several roots, the smallest
    id. Pipelines on a cycle with open alerts and nothing open above share one root: the first
    of them by `rank` (the manager ranks by when their alerts fired, so the member that alerted
    first stays the one that pages), which is itself unexplained.

    `known(p)` gives, for an open pipeline already judged, the root explaining it (itself when
    nothing does), and None for any other: the walk stops at those, so judging a few new alerts
    costs only the way up to the nearest open ones. Otherwise one walk up and one pass over the
    strongly connected components of what it reaches, upstream first: linear in that part of
    the graph.

    Only trusted edges are followed (see the module's docstring), unless `trusted` is false:
    then every reported edge is, which gives the likely cause an untrusted claim would point at.
    """
    edges = lineage.trusted_upstream if trusted else lineage.upstream
    asked = open_ if of is None else of
    judged: dict[str, str | None] = {}

    def settled(node: str) -> str | None:
        if known is None:
            return None
        if node not in judged:
            judged[node] = known(node)
        return judged[node]

    def up(node: str) -> tuple[str, ...]:
        return () if settled(node) is not None else edges(node)

    reached = _upstream_closure(up, asked)
    components = _components(reached, up)
    component_of = {node: i for i, members in enumerate(components) for node in members}
    # Per component: the smallest root among the nearest open pipelines above its members
    # ("" when none); and the root of its own open members: that, or the first of them when
    # nothing explains them ("" when it has none).
    above: list[str] = []
    top: list[str] = []
    for i, members in enumerate(components):
        best = ""
        for node in members:
            for u in up(node):
                j = component_of[u]
                if j == i:
                    continue
                candidate = top[j] or above[j]
                if candidate and (not best or candidate < best):
                    best = candidate
        above.append(best)
        root = settled(members[0]) if len(members) == 1 else None
        if root is not None:
            top.append(root)
            continue
        open_members = [m for m in members if m in open_]
        if not open_members:
            top.append("")
        else:
            top.append(best or min(open_members, key=lambda m: (rank(m), m)))
    out: dict[str, str] = {}
    for pid in asked:
        root = top[component_of[pid]]
        out[pid] = "" if root == pid else root
    return out


def _upstream_closure(up: Callable[[str], tuple[str, ...]], start: Iterable[str]) -> set[str]:
    """`start` and everything upstream of it."""
    seen: set[str] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(u for u in up(node) if u not in seen)
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
