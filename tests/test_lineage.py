"""Root causes along upstream_pipeline_ids: the pure rule on graphs (linear, diamond, cycles,
several roots), then end to end: downstream alerts explained and not paged, the root listing
what it breaks, its severity rising with the blast radius, and explanations ending."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipewarden.server.alerting.lineage import Lineage, TeamTrust, root_causes
from pipewarden.server.alerting.settings import BlastRadiusSettings
from tests.support.alerting import (
    CRITICAL,
    ESCALATED,
    FIRED,
    HIGH,
    RESOLVED,
    Clock,
    Watcher,
    alerts,
    config,
    eventually,
    failures,
    send,
    serving,
    successes,
)
from tests.support.helpers import T0

NOW = T0 + 100 * 3600
TRUST_EVERYONE = {"*": ("*",)}
"""alerts.trusted_teams for tests of explanations across teams (by default a team trusts only
its own lineage: see test_lineage_trust)."""


def graph(edges: str) -> Lineage:
    """A lineage from "A>B B>C" (A feeds B, B feeds C)."""
    upstream: dict[str, list[str]] = {}
    for edge in edges.split():
        up, down = edge.split(">")
        upstream.setdefault(down, []).append(up)
        upstream.setdefault(up, [])
    lineage = Lineage()
    for pid, ups in upstream.items():
        lineage.update(pid, tuple(ups))
    return lineage


@pytest.mark.parametrize(
    ("edges", "open_", "asking", "expected"),
    [
        ("A>B B>C", "ABC", "C", "A"),  # linear: the top of the chain
        ("A>B B>C", "BC", "C", "B"),  # the root is the topmost *open* one
        ("A>B B>C", "AC", "C", "A"),  # a healthy pipeline in between does not break the chain
        ("A>B B>C", "ABC", "A", ""),  # the root itself has no cause
        ("A>B B>C", "C", "C", ""),  # nothing open upstream
        ("A>B A>C B>D C>D", "ABCD", "D", "A"),  # diamond
        ("A>B A>C B>D C>D", "BCD", "D", "B"),  # two roots: the smallest id
        ("X>D A>B B>D", "XABD", "D", "A"),  # X, and B explained by A: the smallest root
        ("A>B B>C C>D X>E E>D", "ABCDX", "D", "A"),  # through healthy E, X is as near as C's A
        ("A>B B>A", "AB", "B", "A"),  # a cycle: its smallest id is the root...
        ("A>B B>A", "AB", "A", ""),  # ...so exactly one member pages
        ("A>B B>A B>C", "ABC", "C", "A"),  # below a cycle: the cycle's root
        ("R>A A>B B>A B>C", "RABC", "A", "R"),  # a cycle under a true root
        ("R>A A>B B>A B>C", "RABC", "C", "R"),
        ("A>A A>B", "AB", "B", "A"),  # a self-loop ends
    ],
)
def test_root_cause(edges: str, open_: str, asking: str, expected: str) -> None:
    lineage = graph(edges)
    assert root_causes(lineage, set(open_))[asking] == expected
    # Judged alone, knowing the others' roots, it comes out the same.
    others = root_causes(lineage, set(open_))
    known = {p: (root or p) for p, root in others.items() if p != asking}
    alone = root_causes(lineage, set(open_), known=known.get, of=[asking])
    assert alone == {asking: expected}


def test_lineage_follows_changed_upstreams_and_walks_cycles_once() -> None:
    lineage = graph("A>B B>C C>A")
    assert lineage.ancestors("C") == {"B": 1, "A": 2}
    assert lineage.descendants("A") == {"B": 1, "C": 2}
    assert lineage.update("B", ()) is True  # B no longer reads from A
    assert lineage.update("B", ()) is False
    assert lineage.descendants("A") == {}
    assert lineage.ancestors("C") == {"B": 1}


async def test_a_linear_chain_pages_the_root_only(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path, trusted_teams=TRUST_EVERYONE), clock) as (app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        # All three fail in the same request: the downstream ones are explained all the same.
        await send(
            stub,
            *failures("C", 3, team="team-c", upstream=["B"]),
            *failures("B", 3, team="team-b", upstream=["A"]),
            *failures("A", 3),
        )
        events = await watcher.wait_count(3)
        fired = {e.alert.pipeline_id: e for e in events}
        assert fired["A"].notify and not fired["A"].alert.caused_by
        for downstream in ("B", "C"):
            e = fired[downstream]
            assert e.type == FIRED and not e.notify
            assert e.alert.caused_by == "A"
            assert "upstream A" in e.reason
        listed = {a.pipeline_id: a for a in await alerts(stub)}
        assert list(listed["A"].impacted_pipelines) == ["B", "C"]
        assert list(listed["A"].impacted_teams) == ["team-b", "team-c"]
        assert listed["B"].caused_by == "A" and list(listed["B"].impacted_pipelines) == []
        # The root recovers: B, still failing, is no longer explained, and receivers hear of
        # it now (the timer judges open alerts' causes again); C is explained by B (a change
        # of cause is no event).
        await send(stub, *successes("A", 1, start=3))
        await watcher.wait_count(4)
        app.partition.alerts.tick()
        later = await watcher.wait_count(5)
        assert [(e.alert.pipeline_id, e.type, e.notify) for e in later[3:]] == [
            ("A", RESOLVED, True),
            ("B", FIRED, True),
        ]
        assert later[4].reason == "no longer explained by an upstream alert"
        listed = {a.pipeline_id: a for a in await alerts(stub)}
        assert listed["C"].caused_by == "B" and listed["B"].caused_by == ""
        assert list(listed["B"].impacted_pipelines) == ["C"]
        await watcher.close()


async def test_a_downstream_failure_after_the_root_is_explained(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (_app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await send(stub, *failures("A", 3))
        await watcher.wait_count(1)
        await send(stub, *failures("D", 3, upstream=["A"]))
        late = (await watcher.wait_count(2))[1]
        assert late.alert.caused_by == "A" and not late.notify
        root = await eventually(
            lambda: alerts(stub), lambda x: any(a.impacted_pipelines for a in x)
        )
        assert next(a for a in root if a.pipeline_id == "A").impacted_pipelines == ["D"]
        await watcher.close()


async def test_a_diamond_names_its_root_once_and_raises_it_by_blast_radius(
    tmp_path: Path,
) -> None:
    clock = Clock(NOW)
    blast = BlastRadiusSettings(high_pipelines=2, critical_pipelines=3)
    cfg = config(tmp_path, blast_radius=blast, trusted_teams=TRUST_EVERYONE)
    async with serving(cfg, clock) as (_app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await send(
            stub,
            *failures("A", 3),
            *failures("B", 3, upstream=["A"]),
            *failures("C", 3, team="team-c", upstream=["A"]),
            *failures("D", 3, team="team-d", upstream=["B", "C"]),
        )
        events = await watcher.wait_count(5)
        paged = [e for e in events if e.notify]
        assert [(e.alert.pipeline_id, e.type) for e in paged] == [("A", FIRED), ("A", ESCALATED)]
        raised = paged[1]
        assert (raised.previous_severity, raised.alert.severity) == (HIGH, CRITICAL)
        assert raised.reason == "explains alerts of 3 downstream pipelines of 3 teams"
        listed = {a.pipeline_id: a for a in await alerts(stub)}
        assert {p: a.caused_by for p, a in listed.items()} == {
            "A": "",
            "B": "A",
            "C": "A",
            "D": "A",
        }
        assert list(listed["A"].impacted_pipelines) == ["B", "C", "D"]
        assert list(listed["A"].impacted_teams) == ["team-a", "team-c", "team-d"]
        await watcher.close()


async def test_a_cycle_of_failures_pages_exactly_one(tmp_path: Path) -> None:
    clock = Clock(NOW)
    async with serving(config(tmp_path), clock) as (_app, stub):
        watcher = Watcher(stub)
        await watcher.ready()
        await send(
            stub,
            *failures("B", 3, upstream=["A"]),
            *failures("A", 3, upstream=["B"]),
            *failures("C", 3, upstream=["B"]),
        )
        events = await watcher.wait_count(3)
        assert [e.alert.pipeline_id for e in events if e.notify] == ["A"]
        listed = {a.pipeline_id: a.caused_by for a in await alerts(stub)}
        assert listed == {"A": "", "B": "A", "C": "A"}
        await watcher.close()


@settings(max_examples=100, deadline=None)
@given(
    edges=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=16),
    open_=st.sets(st.integers(0, 7), min_size=1),
)
def test_root_causes_on_any_graph(edges: list[tuple[int, int]], open_: set[int]) -> None:
    """On any small graph: the answer is empty or an open upstream pipeline; a root is not
    explained itself; only the pipelines above which nothing open is, outside their own cycle,
    go unexplained; and the walk that stops at the nearest open pipelines agrees."""
    lineage = Lineage()
    upstream: dict[str, list[str]] = {}
    for up, down in edges:
        upstream.setdefault(f"p{down}", []).append(f"p{up}")
    for pid, ups in upstream.items():
        lineage.update(pid, tuple(dict.fromkeys(ups)))
    names = {f"p{i}" for i in open_}
    causes = root_causes(lineage, names)
    assert set(causes) == names
    for pid, cause in causes.items():
        above = lineage.ancestors(pid)
        if cause:
            assert cause in names and cause in above
            assert causes[cause] == ""
        else:
            below = lineage.descendants(pid)
            assert all(a in below for a in above if a in names)  # only its own cycle above
            assert pid == min([pid, *(a for a in above if a in names)])
        known = {p: (root or p) for p, root in causes.items() if p != pid}
        assert root_causes(lineage, names, known=known.get, of=[pid]) == {pid: cause}


@settings(max_examples=100, deadline=None)
@given(
    edges=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=16),
    open_=st.sets(st.integers(0, 7), min_size=1),
    teams=st.lists(st.sampled_from("abc"), min_size=8, max_size=8),
    trusted=st.dictionaries(st.sampled_from("abc*"), st.lists(st.sampled_from("abc*"))),
)
def test_trusted_root_causes_are_those_of_the_trusted_edges_alone(
    edges: list[tuple[int, int]],
    open_: set[int],
    teams: list[str],
    trusted: dict[str, list[str]],
) -> None:
    """With teams and trust, the roots are exactly those of the graph of the trusted edges
    alone; and the untrusted judgement, those of every edge."""
    trust = TeamTrust(trusted)
    lineage = Lineage(trust)
    alone = Lineage()
    upstream: dict[int, list[int]] = {}
    for up, down in edges:
        upstream.setdefault(down, []).append(up)
    for i in range(8):
        ups = tuple(dict.fromkeys(f"p{u}" for u in upstream.get(i, [])))
        lineage.update(f"p{i}", ups, teams[i])
    for i in range(8):
        ups = tuple(dict.fromkeys(u for u in upstream.get(i, []) if trust(teams[i], teams[u])))
        alone.update(f"p{i}", tuple(f"p{u}" for u in ups))
    names = {f"p{i}" for i in open_}
    assert root_causes(lineage, names) == root_causes(alone, names)
    everything = Lineage()
    for i in range(8):
        everything.update(f"p{i}", lineage.upstream(f"p{i}"))
    assert root_causes(lineage, names, trusted=False) == root_causes(everything, names)
