"""Ingestion end to end: a real server on a free port, a real channel."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from pipewarden.server.app import App
from pipewarden.server.core.limits import IngestLimits
from pipewarden.v1 import execution_pb2, service_pb2, service_pb2_grpc
from tests.support.helpers import T0, request, run

Stub = service_pb2_grpc.PipelineMonitorStub


async def test_counts_accepted_duplicates_and_running(stub: Stub) -> None:
    response = await stub.Ingest(
        request(
            run("e1", status="running"),
            run("e1"),
            run("e2", status="failed"),
            run("e1"),  # a duplicate within the request
        )
    )
    assert (response.accepted, response.duplicates, response.running) == (2, 1, 1)
    assert not response.rejected
    again = await stub.Ingest(request(run("e2", status="failed"), run("e3", status="cancelled")))
    assert (again.accepted, again.duplicates) == (1, 1)
    health = await stub.GetPipelineHealth(service_pb2.GetPipelineHealthRequest(pipeline_id="p1"))
    assert (health.total_executions, health.succeeded, health.failed, health.cancelled) == (
        3,
        1,
        1,
        1,
    )
    assert health.in_flight == 0


async def test_running_marks_in_flight_and_late_running_is_ignored(stub: Stub) -> None:
    r = await stub.Ingest(request(run("a", status="running"), run("b", status="running")))
    assert (r.accepted, r.duplicates, r.running) == (0, 0, 2)
    health = await stub.GetPipelineHealth(service_pb2.GetPipelineHealthRequest(pipeline_id="p1"))
    assert health.in_flight == 2 and health.total_executions == 0
    await stub.Ingest(request(run("a")))
    r = await stub.Ingest(request(run("a", status="running")))  # late: already counted
    assert (r.accepted, r.duplicates, r.running) == (0, 0, 1)
    health = await stub.GetPipelineHealth(service_pb2.GetPipelineHealthRequest(pipeline_id="p1"))
    assert health.in_flight == 1 and health.total_executions == 1


def _bad(**fields: Any) -> execution_pb2.PipelineExecution:
    msg = run("bad")
    for name, value in fields.items():
        if isinstance(value, Timestamp | Duration):
            getattr(msg, name).CopyFrom(value)
        elif isinstance(value, dict):
            getattr(msg, name).update(value)
        elif isinstance(value, list):
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


BAD_ROWS = [
    (_bad(execution_id=""), "execution_id is required"),
    (_bad(pipeline_id=""), "pipeline_id is required"),
    (_bad(team="  "), "team is required"),
    (_bad(status=0), "status is required"),
    (_bad(status=9), "status 9 is not a known ExecutionStatus"),
    (_bad(records_processed=-5), "records_processed is -5; it must not be negative"),
    (_bad(duration=Duration(seconds=-3)), "duration is -3s; it must not be negative"),
    (_bad(duration=Duration(seconds=1, nanos=-5)), "duration is not a valid Duration"),
    (
        _bad(finished_at=Timestamp(seconds=int(T0) - 60)),
        "finished_at (2026-05-28T20:25:40Z) is before started_at (2026-05-28T20:26:40Z)",
    ),
    (_bad(started_at=Timestamp(seconds=int(T0), nanos=-1)), "started_at is not a valid timestamp"),
    (_bad(started_at=Timestamp(seconds=10**12)), "started_at is not a valid timestamp"),
    (_bad(execution_id="x" * 300), "execution_id is 300 characters long; the limit is 256"),
    (_bad(labels={f"k{i}": "v" for i in range(17)}), "labels has 17 entries; the limit is 16"),
    (_bad(upstream_pipeline_ids=[""]), "upstream_pipeline_ids[0] is empty"),
]


@pytest.mark.parametrize(("row", "reason"), BAD_ROWS, ids=[r for _, r in BAD_ROWS])
async def test_bad_row_is_rejected_with_reason_and_the_rest_counts(
    stub: Stub, row: execution_pb2.PipelineExecution, reason: str
) -> None:
    response = await stub.Ingest(request(run("good-1"), row, run("good-2")))
    assert response.accepted == 2
    assert len(response.rejected) == 1
    rejected = response.rejected[0]
    assert rejected.index == 1
    assert rejected.execution_id == row.execution_id
    assert reason in rejected.reason
    health = await stub.GetPipelineHealth(service_pb2.GetPipelineHealthRequest(pipeline_id="p1"))
    assert health.total_executions == 2


async def test_a_rejected_row_changes_nothing(stub: Stub) -> None:
    await stub.Ingest(request(run("e1", records=100)))
    response = await stub.Ingest(request(_bad(execution_id="e2", records_processed=-1)))
    assert response.accepted == 0 and len(response.rejected) == 1
    # The id of a rejected row is not remembered: a corrected resend counts.
    fixed = await stub.Ingest(request(run("e2", records=300)))
    assert fixed.accepted == 1
    health = await stub.GetPipelineHealth(service_pb2.GetPipelineHealthRequest(pipeline_id="p1"))
    assert health.total_executions == 2 and health.avg_records_processed == 200


async def test_pipeline_keeps_its_team(stub: Stub) -> None:
    await stub.Ingest(request(run("e1", team="team-a")))
    response = await stub.Ingest(request(run("e2", team="team-b")))
    assert response.accepted == 0
    assert "belongs to team 'team-a', not 'team-b'" in response.rejected[0].reason
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team="team-b"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_undecodable_request_is_invalid_argument_and_server_stays_up(
    channel: grpc.aio.Channel, stub: Stub
) -> None:
    raw = channel.unary_unary("/pipewarden.v1.PipelineMonitor/Ingest")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\xff\xff\xff\xff not protobuf")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf" in (info.value.details() or "")
    for name in ("GetPipelineHealth", "ListPipelineHealth", "GetTeamMetrics"):
        call = channel.unary_unary(f"/pipewarden.v1.PipelineMonitor/{name}")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\x0a\xff")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await stub.Ingest(request(run("e1")))).accepted == 1


@pytest.mark.parametrize(
    "server_options",
    [{"limits": IngestLimits(max_request_bytes=64 * 1024, max_executions_per_request=50)}],
)
async def test_oversized_requests_are_resource_exhausted(stub: Stub) -> None:
    big = request(*(run(f"e{i}", error_message="x" * 2000) for i in range(40)))
    assert big.ByteSize() > 64 * 1024
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Ingest(big)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    many = request(*(run(f"e{i}") for i in range(51)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Ingest(many)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "51 executions; the limit is 50" in (info.value.details() or "")
    assert (await stub.Ingest(request(run("ok")))).accepted == 1


async def test_stream_answers_each_request_in_order(stub: Stub) -> None:
    requests = [request(run(f"e{i}"), run(f"e{i}"), run(f"x{i}", records=-1)) for i in range(50)]
    call = stub.StreamIngest(iter(requests))
    responses = [r async for r in call]
    assert len(responses) == 50
    for r in responses:
        assert (r.accepted, r.duplicates, len(r.rejected)) == (1, 1, 1)
        assert r.rejected[0].index == 2
    health = await stub.GetPipelineHealth(service_pb2.GetPipelineHealthRequest(pipeline_id="p1"))
    assert health.total_executions == 50


async def test_stream_with_undecodable_request_answers_the_earlier_ones_first(
    channel: grpc.aio.Channel, stub: Stub
) -> None:
    call = channel.stream_stream(
        "/pipewarden.v1.PipelineMonitor/StreamIngest",
        request_serializer=None,
        response_deserializer=service_pb2.IngestResponse.FromString,
    )(iter([request(run("e1")).SerializeToString(), b"\xff\xfe garbage"]))
    first = await call.read()
    assert first.accepted == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await stub.Ingest(request(run("e1")))).duplicates == 1


async def test_health_service_and_reflection(app: App, channel: grpc.aio.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    check = health_pb2_grpc.HealthStub(channel)
    for service in ("", "pipewarden.v1.PipelineMonitor"):
        answer = await check.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    reply = await call.read()
    names = {s.name for s in reply.list_services_response.service}
    assert "pipewarden.v1.PipelineMonitor" in names
    assert "grpc.health.v1.Health" in names
    call.cancel()
