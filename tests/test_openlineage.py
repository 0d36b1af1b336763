"""OpenLineage ingest: the real openlineage-python client's HTTP transport against a real server;
the mapping's table; refusals; and the start times and dataset producers across kill -9."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import requests

from pipewarden.server.app import App
from pipewarden.server.base.errors import ConfigError
from pipewarden.server.config import parse
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.openlineage.mapping import BadEventError, parse_event
from pipewarden.server.openlineage.producers import DatasetProducers
from pipewarden.server.openlineage.settings import OpenLineageSettings
from pipewarden.v1 import execution_pb2, service_pb2, service_pb2_grpc
from tests.support.config import make_config
from tests.support.helpers import T0
from tests.support.lineage import at, event, lineage_client
from tests.support.process import ServerProcess, free_port


def rid() -> str:
    return str(uuid.uuid4())


async def health(stub: service_pb2_grpc.PipelineMonitorStub, pid: str) -> Any:
    return await stub.GetPipelineHealth(service_pb2.GetPipelineHealthRequest(pipeline_id=pid))


@pytest.fixture
async def ol_app(tmp_path: Path) -> Any:
    config = dataclasses.replace(
        make_config(tmp_path),
        openlineage=OpenLineageSettings(namespace_teams={"spark": "analytics"}),
    )
    node = App(config)
    await node.start()
    try:
        yield node
    finally:
        await node.close()


async def test_the_real_client_start_complete_fail_abort(ol_app: App) -> None:
    assert ol_app.http is not None
    port = ol_app.http.port
    client = lineage_client(port)
    zipped = lineage_client(port, gzip=True)
    one, two, three, four = rid(), rid(), rid(), rid()
    events = [
        (client, event("START", one, "load", t=0, team="payments")),
        (client, event("COMPLETE", one, "load", t=100, outputs={"orders": 40, "refunds": 2})),
        (zipped, event("START", two, "load", t=200, team="payments")),
        (zipped, event("RUNNING", two, "load", t=210)),  # keeps the START's time
        (zipped, event("FAIL", two, "load", t=230, outputs={"orders": 3}, error="disk full")),
        (client, event("START", three, "load", t=300)),
        (client, event("ABORT", three, "load", t=310)),
        # No START seen: counted, with no duration.
        (client, event("COMPLETE", four, "load", t=400, outputs={"orders": None})),
    ]
    for c, e in events:
        await asyncio.to_thread(c.emit, e)
    # The same terminal event again (a client's retry) is a duplicate, still 201.
    await asyncio.to_thread(client.emit, events[1][1])

    async with grpc.aio.insecure_channel(f"127.0.0.1:{ol_app.grpc_port}") as ch:
        stub = service_pb2_grpc.PipelineMonitorStub(ch)
        h = await health(stub, "airflow/load")
        assert h.team == "payments"
        assert (h.succeeded, h.failed, h.cancelled, h.total_executions) == (2, 1, 1, 4)
        assert h.success_rate == pytest.approx(2 / 3)
        # Durations: 100 s and 30 s; the COMPLETE without a START has none.
        assert h.avg_duration_seconds == pytest.approx(65.0)
        assert h.avg_records_processed == pytest.approx((42 + 3 + 0) / 3)
        assert h.last_error_message == "disk full"
        assert h.in_flight == 0
        assert h.last_status == execution_pb2.EXECUTION_STATUS_SUCCEEDED
        assert h.last_execution_time.seconds == int(T0) + 400
    assert ol_app.producers.producers_of(("warehouse", "orders")) == ["airflow/load"]


async def test_teams_and_upstream_pipelines(ol_app: App) -> None:
    assert ol_app.http is not None
    client = lineage_client(ol_app.http.port)
    dag = rid()
    runs = [
        # Extract writes raw.orders; transform reads it and writes orders; report reads orders.
        event("COMPLETE", rid(), "extract", namespace="spark", outputs={"raw.orders": 10}),
        event("START", rid(), "transform", inputs=("raw.orders",), outputs={"orders": None}),
        event(
            "COMPLETE",
            rid(),
            "report",
            namespace="dbt",
            inputs=("orders", "unknown.table"),
            parent=(dag, "airflow", "nightly"),
        ),
    ]
    for e in runs:
        await asyncio.to_thread(client.emit, e)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ol_app.grpc_port}") as ch:
        stub = service_pb2_grpc.PipelineMonitorStub(ch)
        extract = await health(stub, "spark/extract")
        assert extract.team == "analytics"  # namespace_teams
        assert list(extract.upstream_pipeline_ids) == []
        report = await health(stub, "dbt/report")
        assert report.team == "unowned"  # the default team
        # The producer of its input (learned from a START), then its parent's job.
        assert list(report.upstream_pipeline_ids) == ["airflow/transform", "airflow/nightly"]
        transform = await health(stub, "airflow/transform")
        assert transform.in_flight == 1


async def test_a_known_pipeline_keeps_its_team(ol_app: App) -> None:
    assert ol_app.http is not None
    client = lineage_client(ol_app.http.port)
    run_id = rid()
    await asyncio.to_thread(client.emit, event("START", run_id, "job", team="first"))
    # The COMPLETE names no owner (many integrations send job facets on START only), and a
    # later run names another team: both stay with the pipeline's team.
    await asyncio.to_thread(client.emit, event("COMPLETE", run_id, "job", t=5))
    await asyncio.to_thread(client.emit, event("COMPLETE", rid(), "job", t=9, team="second"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ol_app.grpc_port}") as ch:
        h = await health(service_pb2_grpc.PipelineMonitorStub(ch), "airflow/job")
    assert (h.team, h.succeeded) == ("first", 2)


def body(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "eventType": "COMPLETE",
        "eventTime": at(1),
        "run": {"runId": rid()},
        "job": {"namespace": "ns", "name": "raw"},
        "producer": "curl",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ("not json", "not JSON"),
        ([1, 2], "JSON list"),
        ({"eventType": "START"}, "no run, job or dataset"),
        (body(run={"facets": {}}), "run.runId is required"),
        (body(job={"name": "x"}), "job.namespace is required"),
        (body(eventType="FINISHED"), "eventType 'FINISHED' is not one of"),
        (body(eventTime="yesterday"), "not an ISO 8601"),
        (body(eventTime=None), "eventTime is required"),
        (
            body(
                outputs=[
                    {
                        "namespace": "w",
                        "name": "t",
                        "outputFacets": {"outputStatistics": {"rowCount": -5}},
                    }
                ]
            ),
            "rowCount is -5; it must not be negative",
        ),
        (body(job={"namespace": "ns", "name": "x" * 300}), "pipeline_id is 303 characters"),
    ],
)
async def test_bad_events_are_400_with_the_reason_and_change_nothing(
    app: App, doc: Any, reason: str
) -> None:
    assert app.http is not None
    data = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
    url = f"http://127.0.0.1:{app.http.port}/api/v1/lineage"
    async with aiohttp.ClientSession() as session, session.post(url, data=data) as r:
        assert r.status == 400
        answer = await r.json()
    assert answer["code"] == 400
    assert reason in answer["message"]
    assert len(app.partition.shards) == 0


async def test_lenient_about_what_it_does_not_use(app: App) -> None:
    """No schemaURL or producer, unknown facets, OTHER events, JobEvents and DatasetEvents, and
    a body gzipped without saying so."""
    assert app.http is not None
    url = f"http://127.0.0.1:{app.http.port}/api/v1/lineage"
    docs = [
        body(run={"runId": "not-a-uuid", "facets": {"custom": {"x": 1}}}),
        body(eventType="OTHER", outputs=[{"namespace": "w", "name": "t"}]),
        {
            "job": {"namespace": "ns", "name": "static"},
            "outputs": [{"namespace": "w", "name": "u"}],
            "eventTime": at(2),
        },
        {"dataset": {"namespace": "w", "name": "t"}, "eventTime": at(3)},
    ]
    async with aiohttp.ClientSession() as session:
        for doc in docs:
            async with session.post(url, json=doc) as r:
                assert r.status == 201, await r.text()
        async with session.post(url, data=gzip.compress(json.dumps(body()).encode())) as r:
            assert r.status == 201
            assert (await r.json())["outcome"] == "accepted"
    state = app.partition.shards.get("ns/raw")
    assert state is not None and state.succeeded == 2
    assert app.producers.producers_of(("w", "t")) == ["ns/raw"]
    assert app.producers.producers_of(("w", "u")) == ["ns/static"]


async def test_refused_while_recovering(app: App) -> None:
    assert app.http is not None
    app.ready = False
    url = f"http://127.0.0.1:{app.http.port}/api/v1/lineage"
    async with aiohttp.ClientSession() as session, session.post(url, json=body()) as r:
        assert r.status == 503


def test_parse_event_reads_the_facets() -> None:
    e = parse_event(
        {
            "eventType": "fail",
            "eventTime": "2026-05-28T00:00:00.123456789+02:00",
            "run": {
                "runId": "r",
                "facets": {
                    "errorMessage": {"message": "boom", "programmingLanguage": "JAVA"},
                    "parent": {"run": {"runId": "p"}, "job": {"namespace": "a", "name": "dag"}},
                    "jobDependencies": {
                        "upstream": [{"job": {"namespace": "b", "name": "up"}}, {"job": {}}]
                    },
                },
            },
            "job": {
                "namespace": "n",
                "name": "j",
                "facets": {
                    "ownership": {"owners": [{"name": "team:"}, {"name": "team: core "}]},
                    "jobType": {"integration": "SPARK", "jobType": "JOB", "processingType": "B"},
                },
            },
            "outputs": [
                {
                    "namespace": "w",
                    "name": "x",
                    "outputFacets": {"outputStatistics": {"rowCount": 7.0}},
                },
                {"namespace": "w", "name": "y"},
            ],
        }
    )
    assert e.event_type == "FAIL"
    assert e.event_time == pytest.approx(1_779_919_200.123457)
    assert e.owner_team == "core"
    assert e.records == 7
    assert e.outputs == (("w", "x"), ("w", "y"))
    assert e.error_message == "boom"
    assert e.parent == ("a", "dag")
    assert e.depends_on == (("b", "up"),)
    assert e.labels == {"integration": "SPARK", "job_type": "JOB"}
    with pytest.raises(BadEventError, match="rowCount is True"):
        parse_event(
            body(
                outputs=[
                    {
                        "namespace": "w",
                        "name": "t",
                        "outputFacets": {"outputStatistics": {"rowCount": True}},
                    }
                ]
            )
        )


def test_producers_file_survives_a_torn_append(tmp_path: Path) -> None:
    producers = DatasetProducers(tmp_path / "lineage")
    producers.load()
    assert producers.record("p1", [("w", "a"), ("w", "b")])
    assert not producers.record("p1", [("w", "a")])
    assert producers.record("p2", [("w", "a")])
    asyncio.run(producers.flush())
    with producers.path.open("ab") as f:
        f.write(b'{"namespace":"w","na')  # a crash in the middle of an append
    again = DatasetProducers(tmp_path / "lineage")
    again.load()
    assert again.producers_of(("w", "a")) == ["p1", "p2"]
    assert again.producers_of(("w", "b")) == ["p1"]
    assert producers.path.read_bytes().endswith(b"\n")  # rewritten without the torn line
    for i in range(20):
        again.record(f"q{i}", [("w", "c")])
    assert len(again.producers_of(("w", "c"))) == 8


def test_start_times_and_producers_survive_kill_9(tmp_path: Path) -> None:
    """A START is remembered through the log (kill -9) and through a snapshot (SIGTERM); so is
    the dataset producer map, through its own file."""
    data = tmp_path / "data"
    http = free_port()
    extra = ("--http-listen", f"127.0.0.1:{http}")
    first, second = rid(), rid()

    def serve() -> ServerProcess:
        server = ServerProcess(data, *extra)
        server.wait_serving()
        return server

    server = serve()
    try:
        client = lineage_client(http)
        client.emit(event("START", first, "writer", t=0, team="core", outputs={"facts": None}))
        client.emit(event("START", second, "writer", t=50))
        server.kill()
    finally:
        server.kill()

    server = serve()
    try:
        client.emit(event("COMPLETE", first, "writer", t=20, outputs={"facts": 5}))
        # A reader of the dataset, after the restart: its upstream is the writer.
        client.emit(event("COMPLETE", rid(), "reader", t=30, inputs=("facts",)))
        assert server.stop() == 0  # a snapshot, then a clean start from it
    finally:
        server.kill()

    server = serve()
    try:
        client.emit(event("COMPLETE", second, "writer", t=60))
        with grpc.insecure_channel(server.target) as ch:
            stub = service_pb2_grpc.PipelineMonitorStub(ch)
            writer = stub.GetPipelineHealth(
                service_pb2.GetPipelineHealthRequest(pipeline_id="airflow/writer")
            )
            reader = stub.GetPipelineHealth(
                service_pb2.GetPipelineHealthRequest(pipeline_id="airflow/reader")
            )
        assert (writer.team, writer.succeeded, writer.in_flight) == ("core", 2, 0)
        assert writer.avg_duration_seconds == pytest.approx((20 + 10) / 2)
        assert list(reader.upstream_pipeline_ids) == ["airflow/writer"]
        with pytest.raises(requests.HTTPError, match="400"):
            client.emit(event("COMPLETE", rid(), "x" * 300))  # the real client sees a refusal
    finally:
        server.kill()
    assert "Traceback" not in server.log()


def test_configuration() -> None:
    config = parse(
        {
            "openlineage": {
                "namespace_teams": {"airflow-prod": "data-eng"},
                "default_team": "platform",
                "parent_as_upstream": False,
            },
        }
    )
    assert config.openlineage.namespace_teams == {"airflow-prod": "data-eng"}
    assert config.openlineage.default_team == "platform"
    assert not config.openlineage.parent_as_upstream
    for bad, key in (
        ({"openlineage": {"default_team": ""}}, "openlineage.default_team"),
        ({"openlineage": {"namespace_teams": ["x"]}}, "openlineage.namespace_teams"),
        ({"openlineage": {"namespace_teams": {"ns": 3}}}, "openlineage.namespace_teams.ns"),
        ({"openlineage": {"parent_as_upstream": "no"}}, "openlineage.parent_as_upstream"),
        ({"openlineage": {"teams": {}}}, "openlineage.teams"),
    ):
        with pytest.raises(ConfigError) as info:
            parse(bad)
        assert info.value.key == key, bad


async def post_json(app: App, data: bytes | dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST a body (bytes as they are, or a document as JSON) to the lineage endpoint."""
    assert app.http is not None
    url = f"http://127.0.0.1:{app.http.port}/api/v1/lineage"
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    async with aiohttp.ClientSession() as session, session.post(url, data=raw) as r:
        return r.status, await r.json()


def claim(namespace: str, name: str, *outputs: str, owner: str | None = None) -> dict[str, Any]:
    """A static JobEvent: job namespace/name writes the datasets warehouse/<outputs>."""
    job: dict[str, Any] = {"namespace": namespace, "name": name}
    if owner is not None:
        job["facets"] = {"ownership": {"owners": [{"name": f"team:{owner}"}]}}
    return {
        "job": job,
        "outputs": [{"namespace": "warehouse", "name": n} for n in outputs],
        "producer": "tests",
    }


def reader_run(*inputs: str, name: str = "report") -> dict[str, Any]:
    return body(
        job={"namespace": "nsb", "name": name},
        inputs=[{"namespace": "warehouse", "name": n} for n in inputs],
    )


SURROGATE = '"nsa\\ud800"'  # JSON's escape of a lone UTF-16 surrogate


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # The JobEvent: a lone surrogate in a namespace, naming B's dataset.
        (
            b'{"job": {"namespace": ' + SURROGATE.encode() + b', "name": "fake"},'
            b' "outputs": [{"namespace": "warehouse", "name": "customers"}]}',
            "job.namespace holds '\\ud800' at 3: not Unicode text",
        ),
        (
            json.dumps(body(run={"runId": "x"})).replace('"x"', '"\\udfff"').encode(),
            "run.runId holds '\\udfff'",
        ),
        (
            json.dumps(body(producer="x")).replace('"producer"', '"\\ud83d"').encode(),
            "a key in the body",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 64 levels"),  # RecursionError
        (json.dumps({"a": [[[[{"b": 1}]]]] * 1, "deep": [[]] * 1}).encode(), "no run, job"),
        (
            json.dumps(
                body(run={"runId": "r", "facets": {"x": json.loads("[" * 70 + "]" * 70)}})
            ).encode(),
            "nests deeper than 64 levels",
        ),
        (b'{"eventType": "COMPLETE", "run": {"runId": ' + b"1" * 5000 + b"}}", "not JSON"),
    ],
)
async def test_bodies_that_are_not_text_or_nest_too_deep_are_400(
    app: App, raw: bytes, reason: str
) -> None:
    status, answer = await post_json(app, raw)
    assert (status, answer["code"]) == (400, 400), answer
    assert reason in answer["message"]
    assert len(app.partition.shards) == 0 and len(app.producers) == 0


async def test_a_surrogate_claim_never_breaks_the_readers_of_the_dataset(tmp_path: Path) -> None:
    """The issue's case: the claim is refused at the door; and a producers.jsonl that holds
    such a line anyway (or any other bad line) is read without it, so that the runs of the
    dataset's readers are still accepted, across restarts."""
    config = make_config(tmp_path)
    lineage = tmp_path / "data" / "lineage"
    lineage.mkdir(parents=True)
    good = {"namespace": "warehouse", "name": "customers", "producer": "nsb/load", "team": "b"}
    (lineage / "producers.jsonl").write_bytes(
        b'{"namespace":"warehouse","name":"customers","producer":"nsa\\ud800/fake"}\n'
        b'{"namespace":"warehouse","name":"customers","producer":"\xff\xfe"}\n'
        b'{"namespace":"warehouse","name":"customers","producer":7}\n'
        b'["warehouse","customers","nsa/list"]\n'
        b'{"namespace":"warehouse","name":"customers","producer":""}\n'
        + json.dumps(good).encode()
        + b"\n"
    )
    for _restart in range(2):
        node = App(config)
        await node.start()
        try:
            assert node.producers.producers_of(("warehouse", "customers")) == ["nsb/load"]
            raw = json.dumps(claim("nsa", "fake", "customers")).replace('"nsa"', SURROGATE)
            status, answer = await post_json(node, raw.encode())
            assert status == 400, answer
            for _ in range(2):
                status, answer = await post_json(node, reader_run("customers"))
                assert status == 201, answer
            state = node.partition.shards.get("nsb/report")
            assert state is not None and state.upstream == ("nsb/load",)
        finally:
            await node.close()
    assert b"\\ud800" not in (lineage / "producers.jsonl").read_bytes()  # rewritten without


@pytest.mark.parametrize(
    ("time", "refused"),
    [
        ("0001-01-01T00:00:00+23:59", "outside years 1 to 9999 once in UTC"),  # UTC: year 0
        ("9999-12-31T23:59:59-23:59", "outside years 1 to 9999 once in UTC"),  # UTC: year 10000
        ("0001-01-01T00:00:00+00:00", ""),
        ("0001-01-01T23:59:00+23:59", ""),
        # In range, but beyond server.limits.max_future_skew_seconds ahead of the clock.
        ("9999-12-31T23:59:59.999999+00:00", "ahead of the server's clock"),
        ("9999-12-31T00:00:01-23:59", "ahead of the server's clock"),
    ],
)
async def test_event_times_must_lie_in_years_1_to_9999_in_utc(
    app: App, time: str, refused: str
) -> None:
    status, answer = await post_json(app, body(eventTime=time))
    if not refused:
        assert status == 201, answer
        state = app.partition.shards.get("ns/raw")
        assert state is not None and state.succeeded == 1
    else:
        assert status == 400 and refused in answer["message"], answer
        assert len(app.partition.shards) == 0


LONG = 257
UPSTREAMS = IngestLimits().max_upstreams


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (body(run={"runId": "r" * LONG}), "run.runId is 257 characters long; the limit is 256"),
        (
            body(job={"namespace": "n", "name": "x" * 255}),
            "pipeline_id is 257 characters long (job.namespace/job.name); the limit is 256",
        ),
        (
            body(
                job={
                    "namespace": "ns",
                    "name": "raw",
                    "facets": {"ownership": {"owners": [{"name": "team:" + "t" * 129}]}},
                }
            ),
            "the ownership facet's team is 129 characters long; the limit is 128",
        ),
        (
            body(
                job={
                    "namespace": "ns",
                    "name": "raw",
                    "facets": {"jobType": {"integration": "i" * LONG}},
                }
            ),
            "the jobType facet's integration is 257 characters long",
        ),
        (
            body(outputs=[{"namespace": "w", "name": "d" * 1025}]),
            "outputs[0].name is 1025 characters long; the limit is 1024",
        ),
        (
            body(inputs=[{"namespace": "w" * 1025, "name": "d"}]),
            "inputs[0].namespace is 1025 characters long",
        ),
        (
            body(outputs=[{"namespace": "w", "name": f"d{i}"} for i in range(1001)]),
            "the event names 1001 datasets (inputs and outputs); the limit is 1000",
        ),
        (
            claim("ns", "static", *(f"d{i}" for i in range(1001))),
            "the event names 1001 datasets",
        ),
        (
            body(
                run={
                    "runId": "r",
                    "facets": {"parent": {"job": {"namespace": "p", "name": "q" * 255}}},
                }
            ),
            "the parent facet's job makes a pipeline id of 257 characters",
        ),
        (
            body(
                run={
                    "runId": "r",
                    "facets": {
                        "jobDependencies": {
                            "upstream": [
                                {"job": {"namespace": "a", "name": f"j{i}"}}
                                for i in range(UPSTREAMS + 1)
                            ]
                        }
                    },
                }
            ),
            f"the jobDependencies facet names {UPSTREAMS + 1} upstream jobs; "
            f"the limit is {UPSTREAMS}",
        ),
    ],
)
async def test_strings_and_datasets_beyond_their_limits_are_400(
    app: App, doc: dict[str, Any], reason: str
) -> None:
    status, answer = await post_json(app, doc)
    assert status == 400, answer
    assert reason in answer["message"]
    assert len(app.partition.shards) == 0 and len(app.producers) == 0


async def test_strings_at_their_limits_are_accepted_and_error_messages_cut(app: App) -> None:
    doc = body(
        eventType="FAIL",
        run={
            "runId": "r" * 256,
            "facets": {"errorMessage": {"message": "e" * 5000, "programmingLanguage": "x"}},
        },
        job={
            "namespace": "n",
            "name": "x" * 254,
            "facets": {"ownership": {"owners": [{"name": "team:" + "t" * 128}]}},
        },
        outputs=[{"namespace": "w", "name": f"d{i}"} for i in range(998)]
        + [{"namespace": "w", "name": "d" * 1024}, {"namespace": "w" * 1024, "name": "d"}],
    )
    status, answer = await post_json(app, doc)
    assert status == 201, answer
    state = app.partition.shards.get("n/" + "x" * 254)
    assert state is not None and state.team == "t" * 128 and state.failed == 1
    assert state.last_error == "e" * IngestLimits().max_error_message_length
    assert len(app.producers) == 1000


async def test_datasets_per_team_are_bounded_and_other_teams_unaffected(tmp_path: Path) -> None:
    settings = OpenLineageSettings(
        namespace_teams={"nsa": "team-a", "nsb": "team-b"}, max_datasets_per_team=3
    )
    config = dataclasses.replace(make_config(tmp_path), openlineage=settings)
    for restart in range(2):
        node = App(config)
        await node.start()
        try:
            if not restart:
                status, _ = await post_json(node, claim("nsa", "one", "a1", "a2"))
                assert status == 201
                status, _ = await post_json(node, claim("nsa", "two", "a2"))
                assert status == 201
                assert node.producers.team_count("team-a") == 3
            # At the limit: nothing new from team A; what it taught before stays known, and
            # an event teaching nothing new is still welcome.
            status, answer = await post_json(node, claim("nsa", "three", "a3"))
            assert status == 400
            assert answer["message"] == (
                "team 'team-a' already has 3 dataset producers on record; 1 more would pass "
                "its limit of 3 (openlineage.max_datasets_per_team)"
            )
            run = body(
                job={"namespace": "nsa", "name": "one"},
                outputs=[{"namespace": "warehouse", "name": "new"}],
            )
            status, answer = await post_json(node, run)
            assert status == 400 and "max_datasets_per_team" in answer["message"]
            assert node.partition.shards.get("nsa/one") is None  # the run was not counted either
            assert (await post_json(node, claim("nsa", "one", "a1")))[0] == 201
            assert node.producers.producers_of(("warehouse", "a2")) == ["nsa/one", "nsa/two"]
            assert not node.producers.producers_of(("warehouse", "a3"))
            # Team B has its own allowance.
            status, _ = await post_json(node, claim("nsb", f"load{restart}", f"b{restart}"))
            assert status == 201
        finally:
            await node.close()


async def test_another_teams_claims_do_not_push_out_a_datasets_writer(tmp_path: Path) -> None:
    settings = OpenLineageSettings(namespace_teams={"nsa": "team-a", "nsb": "team-b"})
    node = App(dataclasses.replace(make_config(tmp_path), openlineage=settings))
    await node.start()
    try:
        assert (await post_json(node, claim("nsb", "load", "customers")))[0] == 201
        for i in range(20):
            assert (await post_json(node, claim("nsa", f"fake{i}", "customers")))[0] == 201
        writers = node.producers.producers_of(("warehouse", "customers"))
        assert writers[0] == "nsb/load" and len(writers) == 8
        # A team's own new writer replaces its own oldest one.
        assert (await post_json(node, claim("nsb", "load2", "customers")))[0] == 201
        writers = node.producers.producers_of(("warehouse", "customers"))
        assert "nsb/load" not in writers and "nsb/load2" in writers and len(writers) == 8
    finally:
        await node.close()


async def test_the_server_answers_after_every_refusal(app: App) -> None:
    """A few refusals in a row, then a good event and a read: nothing stuck or lost."""
    for raw in (b"[" * 5000, b'{"run": {"runId": "\\ud800"}}', b"\x1f\x8b\x08broken"):
        assert (await post_json(app, raw))[0] == 400
    assert (await post_json(app, body()))[0] == 201
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
        h = await health(service_pb2_grpc.PipelineMonitorStub(ch), "ns/raw")
    assert h.succeeded == 1
