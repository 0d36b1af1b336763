"""SeenExecutions against a plain model of its rules, over random histories (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from server.dedup import ImageBuilder, SeenExecutions


class Model:
    """The rules, on plain lists: ids in arrival order, grouped in chunks of about `chunk` ids,
    each with its latest event time; the oldest forgotten beyond `capacity`, and the oldest
    chunk once its latest time is older than the retention before the newest time added."""

    def __init__(self, capacity: int, retention: float, chunk: int) -> None:
        self.capacity, self.retention, self.chunk = capacity, retention, chunk
        self.order: list[str] = []
        self.bounds: list[list[float]] = []  # [ids, latest time] per chunk, oldest first
        self.newest = float("-inf")
        self.closed = False  # the last chunk takes no more ids

    def add_batch(self, ids: list[str], t: float) -> None:
        if not ids:
            return
        self.order += ids
        self.newest = max(self.newest, t)
        if self.bounds and self.bounds[-1][0] < self.chunk and not self.closed:
            self.bounds[-1][0] += len(ids)
            self.bounds[-1][1] = max(self.bounds[-1][1], t)
        else:
            self.bounds.append([len(ids), t])
            self.closed = False
            if len(self.bounds) > 1 and self.bounds[0][1] < self.newest - self.retention:
                self.forget(int(self.bounds[0][0]))
        if len(self.order) > self.capacity:
            self.forget(len(self.order) - self.capacity)

    def forget(self, n: int) -> None:
        del self.order[:n]
        while n > 0 and self.bounds:
            take = min(n, int(self.bounds[0][0]))
            self.bounds[0][0] -= take
            n -= take
            if self.bounds[0][0] <= 0:
                del self.bounds[0]

    def restart(self, compact: bool) -> None:
        """What a snapshot keeps: the chunks, so the newest time becomes that of the newest
        chunk still kept (a later time whose chunk was forgotten is not in the snapshot; the
        age horizon can only move back, so ids are kept longer, never shorter). Restored from
        the compact form, the chunks are closed: new ids start a chunk of their own."""
        self.newest = max((t for _, t in self.bounds), default=float("-inf"))
        self.closed = compact

    def chunks(self) -> list[tuple[list[str], float]]:
        out, start = [], 0
        for count, t in self.bounds:
            out.append((self.order[start : start + int(count)], t))
            start += int(count)
        return out


# A history: batches of fresh ids with event times, and now and then a restart: from the
# compact form a snapshot writes (1), or from chunks of ids as an older snapshot kept them (2);
# and now and then a slice of the work that turns restored ids into live ones (3), or all the
# rest of it (4), which must change nothing the model can see.
batches = st.lists(
    st.tuples(st.integers(0, 7), st.integers(0, 60), st.sampled_from([0, 0, 0, 1, 2, 3, 3, 4])),
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
    history: list[tuple[int, int, int]], capacity: int, retention: float, chunk: int
) -> None:
    seen = SeenExecutions(capacity, retention, chunk=chunk)
    model = Model(capacity, retention, chunk)
    made = 0
    settling = iter(())
    for size, t, restore in history:
        ids = [f"e{made + i}" for i in range(size)]
        made += size
        seen.add_batch(ids, float(t))
        model.add_batch(ids, float(t))
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
            model.restart(compact=restore == 1)
        assert list(seen) == model.order
        assert len(seen) == len(model.order)
        assert seen.chunks() == model.chunks()
        kept = set(model.order)
        assert all((f"e{i}" in seen) == (f"e{i}" in kept) for i in range(made))
