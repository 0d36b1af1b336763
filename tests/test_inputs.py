"""What clients send is checked before anything changes: every Timestamp against one range,
every string against its limit, and client strings never forge log lines."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf.timestamp_pb2 import Timestamp

from pipewarden.server.alerting.silences import MAX_COMMENT_LENGTH, MAX_NAME_LENGTH
from pipewarden.server.api.requestlimits import RequestLimits, string_limits
from pipewarden.server.base.logsafe import safe
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.validation import MAX_SECONDS, MIN_SECONDS
from pipewarden.server.storage.wal import WriteAheadLog
from pipewarden.storage.v1 import storage_pb2
from pipewarden.v1 import alert_pb2, service_pb2
from tests.support.alerting import STREAK, Clock, alerts, config, failures, send, serving
from tests.support.helpers import T0, run

NOW = T0 + 100 * 3600
HOUR = 3600
SERVICE = service_pb2.DESCRIPTOR.services_by_name["PipelineMonitor"]
INT64_MAX = 2**63 - 1


def _silence(**fields: object) -> service_pb2.CreateSilenceRequest:
    fields.setdefault("created_by", "ana")
    fields.setdefault("ends_at", Timestamp(seconds=int(NOW + HOUR)))
    return service_pb2.CreateSilenceRequest(silence=alert_pb2.Silence(**fields))  # type: ignore[arg-type]


async def _refused(call: object, *words: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    for word in words:
        assert word in (info.value.details() or ""), info.value.details()


BAD_TIMES = [
    ("ends_at", Timestamp(seconds=INT64_MAX)),
    ("ends_at", Timestamp(seconds=10**17)),
    ("ends_at", Timestamp(seconds=MAX_SECONDS + 1)),
    ("ends_at", Timestamp(seconds=int(NOW + HOUR), nanos=1_000_000_000)),
    ("ends_at", Timestamp(seconds=int(NOW + HOUR), nanos=-1)),
    ("starts_at", Timestamp(seconds=MIN_SECONDS - 1)),
    ("starts_at", Timestamp(seconds=-(2**63))),
]


async def test_a_silence_with_a_time_out_of_range_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    async with serving(cfg, Clock(NOW)) as (app, stub):
        await send(stub, *failures("p1", 3, team="team-a"))
        for name, value in BAD_TIMES:
            request = _silence(**{name: value})
            await _refused(stub.CreateSilence(request), f"silence.{name}", "9999-12-31")
        assert list((await stub.ListSilences(service_pb2.ListSilencesRequest())).silences) == []
        team = service_pb2.ListSilencesRequest(team="team-a")
        assert list((await stub.ListSilences(team)).silences) == []
        (alert,) = await alerts(stub)
        assert alert.kind == STREAK and not alert.silenced
        assert await app.snapshot() is not None
    async with serving(cfg, Clock(NOW)) as (_app, stub):
        assert list((await stub.ListSilences(service_pb2.ListSilencesRequest())).silences) == []


async def test_a_silence_to_the_last_instant_of_year_9999_is_kept_and_can_be_ended(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    last = Timestamp(seconds=MAX_SECONDS, nanos=999_999_999)
    first = Timestamp(seconds=MIN_SECONDS)
    async with serving(cfg, Clock(NOW)) as (app, stub):
        created = await stub.CreateSilence(_silence(starts_at=first, ends_at=last))
        assert created.ends_at.seconds == MAX_SECONDS and created.starts_at == first
        assert created.ends_at.ToDatetime().year == 9999
        assert await app.snapshot() is not None
    async with serving(cfg, Clock(NOW)) as (_app, stub):
        (kept,) = (await stub.ListSilences(service_pb2.ListSilencesRequest())).silences
        assert kept.silence_id == created.silence_id and kept.ends_at.seconds == MAX_SECONDS
        ended = await stub.DeleteSilence(
            service_pb2.DeleteSilenceRequest(silence_id=kept.silence_id, by="ana")
        )
        assert ended.ends_at.seconds == int(NOW)


async def test_a_stored_time_beyond_the_range_does_not_break_reads_snapshots_or_the_stop(
    tmp_path: Path,
) -> None:
    """A silence logged with an end no float can turn back into a Timestamp (int64's largest
    second) is listed, snapshotted and stopped with, at the range's end."""
    cfg = config(tmp_path)
    wal = WriteAheadLog(Path(cfg.server.data_dir) / "wal")
    await wal.open()
    bad = alert_pb2.Silence(
        silence_id="s-000000000001",
        team="team-a",
        created_by="ana",
        starts_at=Timestamp(seconds=int(NOW)),
        ends_at=Timestamp(seconds=INT64_MAX),
    )
    record = storage_pb2.LogRecord(silence=storage_pb2.SilenceChange(silence=bad))
    await wal.wait_durable(wal.append(record.SerializeToString()))
    await wal.close()
    async with serving(cfg, Clock(NOW)) as (app, stub):
        (listed,) = (await stub.ListSilences(service_pb2.ListSilencesRequest())).silences
        assert listed.ends_at.ToDatetime().year == 9999
        assert await app.snapshot() is not None
    assert app.failure is None  # the stop's snapshot went through too
    async with serving(cfg, Clock(NOW)) as (_app, stub):
        ended = await stub.DeleteSilence(
            service_pb2.DeleteSilenceRequest(silence_id="s-000000000001", by="ana")
        )
        assert ended.ends_at.seconds == int(NOW)


# -- strings -------------------------------------------------------------------------------------


def _request_string_fields(desc: d.Descriptor, seen: set[str]) -> set[str]:
    """The string fields reachable from a request type, but for those of executions (checked
    row by row in validation)."""
    names: set[str] = set()
    if desc.full_name in seen or desc.full_name == "pipewarden.v1.PipelineExecution":
        return names
    seen.add(desc.full_name)
    for field in desc.fields:
        if field.message_type is not None:
            names |= _request_string_fields(field.message_type, seen)
        elif field.type == d.FieldDescriptor.TYPE_STRING:
            names.add(field.name)
    return names


def test_every_string_field_of_every_request_is_in_the_table() -> None:
    table = string_limits(IngestLimits())
    fields: set[str] = set()
    for method in SERVICE.methods:
        fields |= _request_string_fields(method.input_type, set())
    assert fields <= set(table), f"no limit for {sorted(fields - set(table))}"
    assert table["by"] == table["created_by"] == MAX_NAME_LENGTH
    assert table["comment"] == MAX_COMMENT_LENGTH


def test_the_longest_page_token_the_server_gives_is_within_its_limit() -> None:
    from pipewarden.server.api.convert import encode_token as _encode_token

    limits = IngestLimits()
    token = _encode_token("\U0001f600" * limits.max_team_length, "é" * limits.max_id_length)
    longest = "\U0001f600" * (limits.max_team_length + limits.max_id_length)
    assert len(token) <= string_limits(limits)["page_token"]
    assert len(_encode_token("", longest)) <= string_limits(limits)["page_token"]
    assert (
        RequestLimits(limits).problem(service_pb2.ListPipelineHealthRequest(page_token=token))
        is None
    )


async def test_a_long_acknowledger_is_refused_and_the_alert_stays_unacknowledged(
    tmp_path: Path,
) -> None:
    async with serving(config(tmp_path), Clock(NOW)) as (_app, stub):
        await send(stub, *failures("p1", 3))
        (alert,) = await alerts(stub)
        for by in ("x" * (MAX_NAME_LENGTH + 1), "y" * 15 * 2**20):
            ack = service_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id, by=by)
            await _refused(stub.AcknowledgeAlert(ack), "by is longer than 256 characters")
        (still,) = await alerts(stub)
        assert still.state == alert_pb2.ALERT_STATE_FIRING and not still.acknowledged_by
        ack = service_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id, by="z" * MAX_NAME_LENGTH)
        assert (await stub.AcknowledgeAlert(ack)).acknowledged_by == "z" * MAX_NAME_LENGTH


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("DeleteSilence", service_pb2.DeleteSilenceRequest(silence_id="s-1", by="b" * 257), "by"),
        (
            "DeleteSilence",
            service_pb2.DeleteSilenceRequest(silence_id="s" * 65, by="b"),
            "silence_id",
        ),
        (
            "AcknowledgeAlert",
            service_pb2.AcknowledgeAlertRequest(alert_id="a" * 65, by="b"),
            "alert_id",
        ),
        ("ListAlerts", service_pb2.ListAlertsRequest(team="t" * 129), "team"),
        ("ListSilences", service_pb2.ListSilencesRequest(team="t" * 129), "team"),
        ("ListAlertHistory", service_pb2.ListAlertHistoryRequest(team="t" * 129), "team"),
        ("GetRoutedAlerts", service_pb2.GetRoutedAlertsRequest(team="t" * 129), "team"),
        ("GetTeamMetrics", service_pb2.GetTeamMetricsRequest(team="t" * 129), "team"),
        ("ListAnomalies", service_pb2.ListAnomaliesRequest(pipeline_id="p" * 257), "pipeline_id"),
        (
            "GetPipelineHealth",
            service_pb2.GetPipelineHealthRequest(pipeline_id="p" * 257),
            "pipeline_id",
        ),
        (
            "ListPipelineHealth",
            service_pb2.ListPipelineHealthRequest(page_token="x" * 3000),
            "page_token",
        ),
        ("CreateSilence", _silence(pipeline_id="p" * 257), "silence.pipeline_id"),
        ("CreateSilence", _silence(created_by="c" * 257), "silence.created_by"),
    ],
)
async def test_a_string_past_its_limit_is_refused_naming_the_field_and_the_limit(
    tmp_path: Path, method: str, request_: object, field: str
) -> None:
    async with serving(config(tmp_path), Clock(NOW)) as (_app, stub):
        await _refused(getattr(stub, method)(request_), f"{field} is longer than", "characters")
        assert list((await stub.ListSilences(service_pb2.ListSilencesRequest())).silences) == []


# -- the log -------------------------------------------------------------------------------------


def test_safe_escapes_what_would_break_a_log_line() -> None:
    assert safe("ana") == "ana"
    assert safe("a\nb\rc\x1b[2J\u202e\ud800") == "a\\nb\\rc\\x1b[2J\\u202e\\ud800"
    assert safe("a\\nb") == "a\\\\nb"  # a typed backslash cannot pass for an escape
    assert safe("x" * 1000, 10) == "x" * 10 + "…[1000 characters]"


async def test_client_strings_never_forge_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    forged = "\n2026-12-08 00:00:00 INFO pipewarden.audit: silence ended: silence=s-all by=root"
    async with serving(config(tmp_path), Clock(NOW)) as (_app, stub):
        pipeline = "p1" + forged
        await send(stub, *failures(pipeline, 3, team="team-a"))
        (alert,) = await alerts(stub)
        ack = service_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id, by="ana" + forged)
        await stub.AcknowledgeAlert(ack)
        created = await stub.CreateSilence(
            _silence(
                created_by="bo" + forged,
                comment="c" + forged,
                team="team-a",
                pipeline_id=pipeline,
            )
        )
        await stub.DeleteSilence(
            service_pb2.DeleteSilenceRequest(silence_id=created.silence_id, by="cy\r" + forged)
        )
        response = await stub.Ingest(
            service_pb2.IngestRequest(executions=[run("e1", "p2" + forged, "t" * 200)])
        )
        assert response.rejected
    lines = [r.getMessage() for r in caplog.records]
    assert any("ana" in m and "acknowledged" in m for m in lines)
    assert any("bo\\n" in m for m in lines), lines
    for message in lines:
        assert "\n" not in message and "\r" not in message, message
