"""Fuzzing POST /api/v1/lineage of a real `pipewarden serve` process with hypothesis: every
field the mapping reads, at its limit and beyond (strings, dataset lists, upstream jobs, row
counts), event times at and beyond years 1 and 9999 in UTC with every offset, runs whose START
and end are far apart (the duration), nesting depth, lone surrogates in any string, and wrong
types anywhere. The answer is always 2xx, or 4xx with a reason, never 5xx; the server stays up
and answers reads; what the fuzzing did not name does not move; and team B, whose dataset the
fuzzing claims again and again, is still paged: its alert is explained by nobody it does not
trust."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.process import ServerProcess, free_port

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
CONFIG = """
openlineage:
  namespace_teams: {nsb: team-b, nsa: team-a}
"""
B_JOB = "nsb/report"
B_INPUT = {"namespace": "warehouse", "name": "customers"}
SENTINEL = "nsb/sentinel"

# -- limits, as configured by default (server.config.IngestLimits, OpenLineageSettings) --------
ID, TEAM, LABEL, UPSTREAMS, DATASETS, DATASET_NAME = 256, 128, 256, 256, 1000, 1024

ODD = [
    "",
    " ",
    "\x00",
    "\u202e\u202d",
    "e\u0301\u0301",
    "\U0001f468\u200d\U0001f469",
    "\ufeff\uffff",
    "\U0010ffff",
    "\ud800",  # lone surrogates: JSON escapes them, and they must never get in
    "a\udfffb",
    "\udbff\ud800",  # two high/low halves the wrong way round
]


def sized(limit: int) -> st.SearchStrategy[str]:
    """Strings at a limit, just beyond it, around it and odd, or short and random."""
    return st.one_of(
        st.sampled_from(["x" * limit, "x" * (limit + 1), "é" * limit, "y" * (limit - 1)]),
        st.sampled_from(ODD),
        st.text(max_size=20),
        st.builds(lambda s: s + "\ud834", st.text(max_size=5)),  # a trailing lone half
    )


WRONG = st.sampled_from([None, 0, -1, 1.5, True, [], {}, "s", [1, "a"], {"k": None}])
"""Values of the wrong type for anything."""


def maybe_wrong(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, strategy, strategy, WRONG)


OFFSETS = ["Z", "+00:00", "+23:59", "-23:59", "+05:30", "-12:00", ""]
times = st.one_of(
    st.sampled_from(
        [
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+23:59",  # UTC: year 0
            "0001-01-01T23:58:59+23:59",
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59-23:59",  # UTC: year 10000
            "9999-12-31T00:00:00-23:59",
            "1970-01-01T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "yesterday",
            "",
            "2026-06-01T10:00:00.123456789+02:00",
        ]
    ),
    st.builds(
        lambda dt, offset: dt.isoformat(timespec="microseconds") + offset,
        st.datetimes(),
        st.sampled_from(OFFSETS),
    ),
)
row_counts = st.one_of(
    st.sampled_from([0, 1, 2**63 - 1, 2**63, -1, 1e308, float("nan"), float("inf"), 1.5]),
    st.integers(),
    WRONG,
)


def datasets(max_count: int) -> st.SearchStrategy[Any]:
    one = st.fixed_dictionaries(
        {"namespace": maybe_wrong(sized(DATASET_NAME)), "name": maybe_wrong(sized(DATASET_NAME))},
        optional={
            "outputFacets": st.fixed_dictionaries(
                {"outputStatistics": st.fixed_dictionaries({"rowCount": row_counts})}
            )
        },
    )
    return st.one_of(
        st.lists(one, max_size=3),
        st.just([B_INPUT]),
        st.sampled_from([max_count, max_count + 1]).map(
            lambda n: [{"namespace": "fz", "name": f"d{i}"} for i in range(n)]
        ),
        WRONG,
    )


def nested(depth: int) -> list[Any]:
    """Lists `depth` deep (the deepest ones come as raw bodies: see test_raw_bodies)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def job_ref(namespace: Any, name: Any) -> dict[str, Any]:
    return {"job": {"namespace": namespace, "name": name}}


job_facets = st.fixed_dictionaries(
    {},
    optional={
        "ownership": st.fixed_dictionaries(
            {
                "owners": maybe_wrong(
                    st.lists(
                        st.fixed_dictionaries(
                            {"name": maybe_wrong(sized(TEAM).map(lambda t: "team:" + t))}
                        ),
                        max_size=2,
                    )
                )
            }
        ),
        "jobType": st.fixed_dictionaries(
            {"integration": maybe_wrong(sized(LABEL)), "jobType": maybe_wrong(sized(LABEL))}
        ),
    },
)
EVENT_TYPES = ["START", "RUNNING", "COMPLETE", "FAIL", "ABORT", "OTHER", "fail", "DONE", ""]


def _set(*path: str) -> Callable[[dict[str, Any], Any], None]:
    """A mutation that puts a value at `path` (objects made on the way)."""

    def put(doc: dict[str, Any], value: Any) -> None:
        for key in path[:-1]:
            if not isinstance(doc.get(key), dict):
                doc[key] = {}
            doc = doc[key]
        doc[path[-1]] = value

    return put


def _drop(key: str) -> Callable[[dict[str, Any], Any], None]:
    def drop(doc: dict[str, Any], value: Any) -> None:
        doc.pop(key, None)

    return drop


def _row_count(doc: dict[str, Any], value: Any) -> None:
    doc["outputs"] = [
        {
            "namespace": "fz",
            "name": "rows",
            "outputFacets": {"outputStatistics": {"rowCount": value}},
        }
    ]


MUTATIONS: dict[str, tuple[Callable[[dict[str, Any], Any], None], st.SearchStrategy[Any]]] = {
    "eventType": (_set("eventType"), maybe_wrong(st.sampled_from(EVENT_TYPES))),
    "eventTime": (_set("eventTime"), maybe_wrong(times)),
    "runId": (_set("run", "runId"), maybe_wrong(sized(ID))),
    "namespace": (_set("job", "namespace"), maybe_wrong(sized(ID // 2))),
    "name": (_set("job", "name"), maybe_wrong(sized(ID - 3))),
    "owner": (
        _set("job", "facets", "ownership", "owners"),
        maybe_wrong(st.builds(lambda t: [{"name": "team:" + t}], sized(TEAM))),
    ),
    "jobType": (_set("job", "facets", "jobType", "integration"), maybe_wrong(sized(LABEL))),
    "errorMessage": (_set("run", "facets", "errorMessage", "message"), maybe_wrong(sized(4096))),
    "parent": (
        _set("run", "facets", "parent"),
        maybe_wrong(st.builds(job_ref, sized(ID // 2), sized(ID // 2))),
    ),
    "jobDependencies": (
        _set("run", "facets", "jobDependencies", "upstream"),
        st.one_of(
            st.sampled_from([UPSTREAMS, UPSTREAMS + 1]).map(
                lambda n: [job_ref("fz", f"j{i}") for i in range(n)]
            ),
            maybe_wrong(st.lists(st.builds(job_ref, sized(ID // 2), sized(ID // 2)), max_size=2)),
        ),
    ),
    "inputs": (_set("inputs"), datasets(DATASETS)),
    "outputs": (_set("outputs"), datasets(DATASETS)),
    "rowCount": (_row_count, row_counts),
    "deep": (_set("run", "facets", "deep"), st.sampled_from([61, 62, 63, 64, 500]).map(nested)),
    "run": (_set("run"), WRONG),
    "job": (_set("job"), WRONG),
    "runFacets": (_set("run", "facets"), WRONG),
    "jobFacets": (_set("job", "facets"), WRONG),
    "noRun": (_drop("run"), st.none()),
    "noTime": (_drop("eventTime"), st.none()),
}
"""Every field the mapping reads, and how it goes wrong: at its limit and beyond, odd text
and lone surrogates, out-of-range times, wrong types, missing."""


@st.composite
def run_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid RunEvent of a job of its own, with up to two fields drawn from MUTATIONS."""
    doc: dict[str, Any] = {
        "eventType": draw(st.sampled_from(["START", "COMPLETE", "FAIL", "OTHER"])),
        "eventTime": "2026-06-01T10:00:00Z",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "fz", "name": f"job{draw(st.integers(0, 20))}"},
        "inputs": draw(st.sampled_from([[], [B_INPUT]])),
        "producer": "fuzz",
    }
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=2, unique=True)):
        mutate, values = MUTATIONS[name]
        mutate(doc, draw(values))
    return doc


@st.composite
def job_events(draw: st.DrawFn) -> dict[str, Any]:
    """A JobEvent, often claiming team B's dataset."""
    return {
        "job": draw(
            maybe_wrong(
                st.fixed_dictionaries(
                    {
                        "namespace": maybe_wrong(st.sampled_from(["nsa", "fz"])),
                        "name": maybe_wrong(sized(ID // 2)),
                    },
                    optional={"facets": job_facets},
                )
            )
        ),
        "outputs": draw(st.one_of(st.just([B_INPUT]), datasets(DATASETS))),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root: Path = tmp_path_factory.mktemp("fuzz-ol")
    (root / "pipewarden.yaml").write_text(CONFIG)
    http = free_port()
    proc = ServerProcess(
        root / "data",
        "--config",
        str(root / "pipewarden.yaml"),
        "--http-listen",
        f"127.0.0.1:{http}",
    )
    try:
        proc.wait_serving()
        yield proc, f"http://127.0.0.1:{http}/api/v1/lineage"
    finally:
        proc.stop()


def post(url: str, doc: Any) -> requests.Response:
    return requests.post(url, data=json.dumps(doc).encode(), timeout=30)


def fail(namespace: str, name: str, i: int, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": "FAIL",
        "eventTime": f"2026-06-01T{i:02d}:00:00Z",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": namespace, "name": name},
        "producer": "tests",
        **extra,
    }


def alert_of(target: str, pipeline: str) -> Any:
    with grpc.insecure_channel(target) as ch:
        stub = service_pb2_grpc.PipelineMonitorStub(ch)
        listed = stub.ListAlerts(service_pb2.ListAlertsRequest(), timeout=10).alerts
    return next((a for a in listed if a.pipeline_id == pipeline), None)


def health(target: str, pipeline: str) -> bytes:
    with grpc.insecure_channel(target) as ch:
        stub = service_pb2_grpc.PipelineMonitorStub(ch)
        request = service_pb2.GetPipelineHealthRequest(pipeline_id=pipeline)
        return stub.GetPipelineHealth(request, timeout=10).SerializeToString()


def eventually(probe: Callable[[], Any], within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("not within the time")


@pytest.fixture(scope="module")
def paged_b(server: tuple[ServerProcess, str]) -> Iterator[None]:
    """Team A claims B's input and fails; then B fails and is paged (its alert firing,
    explained by nobody); a sentinel pipeline of B counts some runs."""
    proc, url = server
    assert post(url, {"job": {"namespace": "nsa", "name": "claimer"}, "outputs": [B_INPUT]}).ok
    for i in range(5):
        assert post(url, fail("nsa", "claimer", i)).status_code == 201
    for i in range(5):
        assert post(url, fail("nsb", "report", i, inputs=[B_INPUT])).status_code == 201
    for i in range(3):
        done = {**fail("nsb", "sentinel", i), "eventType": "COMPLETE"}
        assert post(url, done).status_code == 201
    alert = eventually(lambda: alert_of(proc.target, B_JOB))
    assert alert.caused_by == "" and alert.untrusted_cause == "nsa/claimer"
    yield


SEEN: dict[str, int] = {}
"""How often each kind of answer came: 201, or the kind of a refusal's reason."""
REASONS = {
    "limit": "the limit is",
    "time": "outside years 1 to 9999",
    "text": "not Unicode text",
    "depth": "nests deeper than",
}


def check(server: tuple[ServerProcess, str], doc: Any) -> None:
    proc, url = server
    r = post(url, doc)
    assert r.status_code < 500, f"{r.status_code} {r.text[:300]} to {json.dumps(doc)[:300]}"
    if r.status_code >= 400:
        message = r.json()["message"]
        assert message, r.text  # a reason
        for kind, words in REASONS.items():
            if words in message:
                SEEN[kind] = SEEN.get(kind, 0) + 1
    else:
        SEEN[str(r.status_code)] = SEEN.get(str(r.status_code), 0) + 1
    assert proc.proc.poll() is None, proc.log()[-3000:]


def b_still_paged(server: tuple[ServerProcess, str], before: bytes) -> None:
    proc, _url = server
    alert = alert_of(proc.target, B_JOB)
    assert alert is not None and not alert.silenced
    assert alert.caused_by == "", f"B's alert is muted by {alert.caused_by}"
    assert health(proc.target, SENTINEL) == before  # reads answer, the sentinel did not move
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def test_run_events(server: tuple[ServerProcess, str], paged_b: None) -> None:
    before = health(server[0].target, SENTINEL)

    @FUZZ
    @given(run_events())
    def fuzz(doc: dict[str, Any]) -> None:
        check(server, doc)

    SEEN.clear()
    fuzz()
    b_still_paged(server, before)
    # The strategies do produce accepted events and every kind of refusal.
    assert SEEN.get("201", 0) > 10, SEEN
    for kind in REASONS:
        assert SEEN.get(kind, 0) > 0, (kind, SEEN)


def test_job_events_claiming_bs_dataset(server: tuple[ServerProcess, str], paged_b: None) -> None:
    before = health(server[0].target, SENTINEL)

    @settings(FUZZ, max_examples=60)
    @given(job_events(), st.integers(0, 3))
    def fuzz(doc: dict[str, Any], failures: int) -> None:
        check(server, doc)
        job = doc.get("job")
        if isinstance(job, dict) and isinstance(job.get("name"), str):
            for i in range(failures):  # the claimant fails, as in the issue
                check(server, fail(str(job.get("namespace")), job["name"], i))

    fuzz()
    b_still_paged(server, before)


def test_runs_far_apart(server: tuple[ServerProcess, str], paged_b: None) -> None:
    """A START and its end at any two times: the duration is whatever lies between, from
    none to nearly ten thousand years, or the end comes before the start."""
    before = health(server[0].target, SENTINEL)

    @settings(FUZZ, max_examples=60)
    @given(times, times, st.sampled_from(["COMPLETE", "FAIL", "ABORT", "RUNNING"]))
    def fuzz(start: str, end: str, state: str) -> None:
        run_id = str(uuid.uuid4())
        for event_type, at in (("START", start), (state, end)):
            doc = {
                "eventType": event_type,
                "eventTime": at,
                "run": {"runId": run_id},
                "job": {"namespace": "fz", "name": "apart"},
            }
            check(server, doc)

    fuzz()
    b_still_paged(server, before)


def test_raw_bodies(server: tuple[ServerProcess, str], paged_b: None) -> None:
    """Bytes that are not JSON, or JSON that is not text, in any encoding."""
    _proc, url = server
    before = health(server[0].target, SENTINEL)

    @settings(FUZZ, max_examples=60)
    @given(
        st.one_of(
            st.binary(max_size=256),
            st.sampled_from(
                [
                    b"[" * 100_000,
                    b'{"run": {"runId": "\\ud800"}, "job": {}}',
                    '{"job": {"namespace": "\\udc00", "name": "x"}}'.encode("utf-16"),
                    b"\x1f\x8b\x08\x00garbage",
                    b'{"eventTime": 1e999}',
                    b"NaN",
                ]
            ),
        )
    )
    def fuzz(raw: bytes) -> None:
        r = requests.post(url, data=raw, timeout=30)
        assert r.status_code < 500, f"{r.status_code} {r.text[:300]} to {raw[:200]!r}"
        if r.status_code >= 400:
            assert r.json()["message"]

    fuzz()
    b_still_paged(server, before)
