"""SeenExecutions against a plain model of its rules, over random histories (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipewarden.server.core.dedup import ImageBuilder, SeenExecutions


class Chunk:
    def __init__(self, team: str, ids: list[str], t: float) -> None:
        self.team, self.ids, self.t, self.closed = team, ids, t, False


class Model:
    """The rules, on plain lists: each team's ids in arrival order, grouped in chunks of about
    `chunk` ids of one team, each with the latest time its ids were received. When a chunk
    begins, the oldest chunks whose time is older than the retention before the newest time are
    forgotten. Beyond `capacity`, one id at a time is forgotten: the oldest of the team that
    holds the most (of equal teams, the one that came last in the teams' order)."""

    def __init__(self, capacity: int, retention: float, chunk: int) -> None:
        self.capacity, self.retention, self.chunk = capacity, retention, chunk
        self.chunks: list[Chunk] = []  # oldest first, all teams
        self.order: dict[str, None] = {}  # the teams holding ids, in the order they came
        self.newest = float("-inf")

    def held(self, team: str) -> int:
        return sum(len(c.ids) for c in self.chunks if c.team == team)

    def add_batch(self, team: str, ids: list[str], t: float) -> None:
        if not ids:
            return
        self.newest = max(self.newest, t)
        self.order.setdefault(team)
        last = [c for c in self.chunks if c.team == team and c.ids][-1:]
        if last and len(last[0].ids) < self.chunk and not last[0].closed:
            last[0].ids += ids
            last[0].t = max(last[0].t, t)
        else:
            self.chunks.append(Chunk(team, list(ids), t))
            horizon = self.newest - self.retention
            while len(self.chunks) > 1 and (not self.chunks[0].ids or self.chunks[0].t < horizon):
                self.chunks.pop(0)
            self._tidy()
        while sum(len(c.ids) for c in self.chunks) > self.capacity:
            most = max(self.held(team) for team in self.order)
            victim = [team for team in self.order if self.held(team) == most][-1]
            next(c for c in self.chunks if c.team == victim and c.ids).ids.pop(0)
            self._tidy()

    def _tidy(self) -> None:
        for team in list(self.order):
            if not self.held(team):
                del self.order[team]

    def restart(self) -> None:
        """What a snapshot keeps: the chunks holding ids, closed; the newest time becomes that
        of the newest chunk kept (the age horizon can only move back, so ids are kept longer,
        never shorter)."""
        self.chunks = [c for c in self.chunks if c.ids]
        for c in self.chunks:
            c.closed = True
        self.newest = max((c.t for c in self.chunks), default=float("-inf"))
        self.order = dict.fromkeys(c.team for c in self.chunks)

    def kept(self) -> list[tuple[str, list[str], float]]:
        return [(c.team, list(c.ids), c.t) for c in self.chunks if c.ids]


# A history: batches of fresh ids of one of three teams with the time received, and now and
# then a restart: from the compact form a snapshot writes (1), or from chunks of ids (2); and
# now and then a slice of the work that turns restored ids into live ones (3), or all the rest
# of it (4), which must change nothing the model can see.
batches = st.lists(
    st.tuples(
        st.sampled_from("abc"),
        st.integers(0, 7),
        st.integers(0, 60),
        st.sampled_from([0, 0, 0, 1, 2, 3, 3, 4]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=1000, deadline=None)
@given(
    batches,
    st.integers(1, 40),
    st.sampled_from([5.0, 20.0, float("inf")]),
    st.integers(1, 6),
)
def test_remembers_and_forgets_as_the_model(
    history: list[tuple[str, int, int, int]], capacity: int, retention: float, chunk: int
) -> None:
    seen = SeenExecutions(capacity, retention, chunk=chunk)
    model = Model(capacity, retention, chunk)
    made = 0
    settling = iter(())
    for team, size, t, restore in history:
        ids = [f"{team}{made + i}" for i in range(size)]
        made += size
        seen.add_batch(team, ids, float(t))
        model.add_batch(team, ids, float(t))
        if restore in (3, 4):
            if next(settling, None) is None:  # done, or never begun: begin again
                settling = seen.settle(step=2)
            if restore == 4:
                for _ in settling:
                    pass
                assert seen.restored is None
        elif restore:  # a snapshot and a restart: the same ids, in the same chunks
            again = SeenExecutions(capacity, retention, chunk=chunk)
            if restore == 1:
                image = ImageBuilder(seen)
                for _ in image.steps(step=3):
                    pass
                again.restore(image.result)
            else:
                again.restore(seen.chunks())
            seen = again
            settling = iter(())
            model.restart()
        assert seen.chunks() == model.kept()
        assert len(seen) == sum(len(ids) for _, ids, _ in model.kept())
        kept = {x for _, ids, _ in model.kept() for x in ids}
        assert all(
            (x in seen) == (x in kept) for x in (f"{p}{i}" for i in range(made) for p in "abc")
        )
        for name in "abc":
            assert seen.held(name) == model.held(name)
