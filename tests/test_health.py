"""Health queries end to end, against figures computed by hand."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from pipewarden.v1 import service_pb2, service_pb2_grpc
from tests.support.helpers import T0, request, run

Stub = service_pb2_grpc.PipelineMonitorStub


async def _health(stub: Stub, pipeline_id: str) -> service_pb2.health__pb2.PipelineHealth:
    return await stub.GetPipelineHealth(
        service_pb2.GetPipelineHealthRequest(pipeline_id=pipeline_id)
    )


async def test_pipeline_aggregates_follow_the_contract(stub: Stub) -> None:
    await stub.Ingest(
        request(
            run("e1", start=T0, duration=10, records=100),
            run(
                "e2",
                start=T0 + 100,
                duration=30,
                records=300,
                status="failed",
                error_message="disk full",
            ),
            run("e3", start=T0 + 200, duration=50, records=999, status="cancelled"),
            run("e4", start=T0 + 300, duration=20, records=200),
        )
    )
    h = await _health(stub, "p1")
    assert h.team == "team-a"
    assert (h.total_executions, h.succeeded, h.failed, h.cancelled) == (4, 2, 1, 1)
    assert h.success_rate == pytest.approx(2 / 3)
    # Averages are over succeeded and failed executions only: (10 + 30 + 20) / 3.
    assert h.avg_duration_seconds == pytest.approx(20.0)
    assert h.avg_records_processed == pytest.approx(200.0)
    assert h.last_execution_time.ToSeconds() == T0 + 320
    assert h.consecutive_failures == 0
    assert h.last_error_message == "disk full"


async def test_duration_field_wins_and_unknown_durations_stay_out_of_the_average(
    stub: Stub,
) -> None:
    explicit = run("e1", start=T0, duration=100)
    explicit.duration.CopyFrom(Duration(seconds=7))  # differs from finished - started on purpose
    no_times = run("e2", start=None, duration=None)
    await stub.Ingest(request(explicit, no_times))
    h = await _health(stub, "p1")
    assert h.total_executions == 2
    assert h.avg_duration_seconds == pytest.approx(7.0)


async def test_success_rate_is_zero_with_only_cancelled_runs(stub: Stub) -> None:
    await stub.Ingest(request(run("e1", status="cancelled")))
    h = await _health(stub, "p1")
    assert (h.total_executions, h.success_rate, h.avg_duration_seconds) == (1, 0.0, 0.0)


async def test_consecutive_failures_follow_event_time(stub: Stub) -> None:
    await stub.Ingest(
        request(
            run("s1", start=T0),
            run("f1", start=T0 + 100, status="failed"),
            run("f2", start=T0 + 200, status="failed"),
            run("f3", start=T0 + 300, status="failed"),
        )
    )
    assert (await _health(stub, "p1")).consecutive_failures == 3
    # A late success that happened between f1 and f2 leaves two failures after it.
    await stub.Ingest(request(run("s-late", start=T0 + 150)))
    h = await _health(stub, "p1")
    assert h.consecutive_failures == 2
    assert h.last_execution_time.ToSeconds() == T0 + 310
    # A late failure from before the latest success does not join the streak.
    await stub.Ingest(request(run("f-old", start=T0 + 50, status="failed")))
    assert (await _health(stub, "p1")).consecutive_failures == 2
    await stub.Ingest(request(run("s2", start=T0 + 400)))
    assert (await _health(stub, "p1")).consecutive_failures == 0


async def test_team_metrics_are_over_all_executions_not_a_mean_of_means(stub: Stub) -> None:
    await stub.Ingest(
        request(
            # p1: 1 of 1 succeeded, 10 s.  p2: 1 of 3 succeeded, 100 s each.
            run("a1", "p1", duration=10, records=10),
            run("b1", "p2", duration=100, records=1000),
            run("b2", "p2", duration=100, records=1000, status="failed"),
            run("b3", "p2", duration=100, records=1000, status="failed"),
            run("c1", "p3", team="team-b"),
        )
    )
    t = await stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team="team-a"))
    assert (t.pipeline_count, t.total_executions, t.succeeded, t.failed) == (2, 4, 2, 2)
    assert t.success_rate == pytest.approx(0.5)  # a mean of means would say (1 + 1/3) / 2
    assert t.avg_duration_seconds == pytest.approx(310 / 4)
    assert t.avg_records_processed == pytest.approx(3010 / 4)
    assert t.failing_pipelines == 1
    listed = await stub.ListTeamMetrics(service_pb2.ListTeamMetricsRequest())
    assert [x.team for x in listed.teams] == ["team-a", "team-b"]
    assert listed.teams[0] == t


async def test_unknown_pipeline_and_team_are_not_found(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _health(stub, "nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetTeamMetrics(service_pb2.GetTeamMetricsRequest(team="nobody"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _health(stub, "")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _all_pages(stub: Stub, team: str, size: int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await stub.ListPipelineHealth(
            service_pb2.ListPipelineHealthRequest(team=team, page_size=size, page_token=token)
        )
        pages.append([p.pipeline_id for p in page.pipelines])
        token = page.next_page_token
        if not token:
            return pages


async def test_list_pages_in_stable_order_with_a_team_filter(stub: Stub) -> None:
    ids = [f"pipe-{i:03d}" for i in range(25)]
    await stub.Ingest(
        request(
            *(run(f"e-{p}", p, team="even" if i % 2 == 0 else "odd") for i, p in enumerate(ids))
        )
    )
    pages = await _all_pages(stub, "", 10)
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [pid for page in pages for pid in page] == sorted(ids)
    evens = [pid for page in await _all_pages(stub, "even", 4) for pid in page]
    assert evens == sorted(ids)[::2]
    # A pipeline added while paging does not shift or repeat what follows.
    first = await stub.ListPipelineHealth(service_pb2.ListPipelineHealthRequest(page_size=10))
    await stub.Ingest(request(run("e-new", "pipe-000a", team="even")))
    second = await stub.ListPipelineHealth(
        service_pb2.ListPipelineHealthRequest(page_size=10, page_token=first.next_page_token)
    )
    assert second.pipelines[0].pipeline_id == "pipe-010"


async def test_bad_page_token_and_size_are_invalid_argument(stub: Stub) -> None:
    await stub.Ingest(request(*(run(f"e{i}", f"p{i}") for i in range(3))))
    first = await stub.ListPipelineHealth(service_pb2.ListPipelineHealthRequest(page_size=1))
    for bad in (
        service_pb2.ListPipelineHealthRequest(page_token="!!not-a-token"),
        # A token is tied to its team filter.
        service_pb2.ListPipelineHealthRequest(team="team-a", page_token=first.next_page_token),
        service_pb2.ListPipelineHealthRequest(page_size=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListPipelineHealth(bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_explicit_zero_times_and_durations_count_as_set(stub: Stub) -> None:
    zero = run("e1", start=T0, duration=10)
    zero.duration.CopyFrom(Duration(seconds=0))  # explicitly 0: it wins over finish - start
    epoch = run("e2", start=None, duration=None)
    epoch.started_at.FromSeconds(0)  # 1970-01-01 is a time, if an odd one
    epoch.finished_at.FromSeconds(4)
    await stub.Ingest(request(zero, epoch))
    h = await _health(stub, "p1")
    assert h.total_executions == 2
    assert h.avg_duration_seconds == pytest.approx(2.0)  # (0 + 4) / 2
