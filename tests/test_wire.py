"""server/core/wire.py against protobuf: whatever the bytes, decode_rows gives the rows that parsing
with protobuf, `convert` and `row` give, or None (and then replay parses with protobuf)."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipewarden.server.core.ingest import row
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.validation import convert
from pipewarden.server.core.wire import decode_rows
from pipewarden.v1 import execution_pb2, service_pb2
from tests.support.helpers import T0, run

LIMITS = IngestLimits()
RECEIVED = 1_780_000_000.25


def _expected(raw: bytes, mask: bytes, received: float) -> list | None:
    """The rows protobuf and convert give for the marked events; None when protobuf cannot
    parse the bytes, or when convert refuses an event (decode_rows leaves both to them)."""
    try:
        request = service_pb2.IngestRequest.FromString(raw)
    except Exception:
        return None
    rows = []
    for i, msg in enumerate(request.executions):
        if mask and not mask[i]:
            continue
        e = convert(msg, received, LIMITS, check_limits=False)
        if isinstance(e, str):
            return None
        rows.append(row(e))
    return rows


def _same(a: list, b: list) -> bool:
    """Equal rows, floats compared bit for bit (nan is never a time here, but be exact)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(u, float) and isinstance(v, float):
                if not (u == v or (math.isnan(u) and math.isnan(v))) or math.copysign(
                    1, u
                ) != math.copysign(1, v):
                    return False
            elif u != v or type(u) is not type(v):
                return False
    return True


def _check(raw: bytes, mask: bytes = b"") -> list | None:
    got = decode_rows(raw, mask, RECEIVED, LIMITS.max_error_message_length)
    if got is not None:
        expected = _expected(raw, mask, RECEIVED)
        assert expected is not None, "decoded what protobuf or convert refuses"
        assert _same(got, expected), (got, expected)
    return got


timestamps = st.one_of(
    st.none(),
    st.tuples(st.integers(-(2**40), 2**40), st.integers(-5, 2 * 10**9)),
    st.tuples(st.integers(T0 - 10**6, T0 + 10**6), st.integers(0, 999_999_999)),
)
texts = st.text(max_size=12)
ids = st.one_of(texts, st.sampled_from(["", " ", "e-1", "p", "ünïcode ✓", "a\nb"]))


@st.composite
def executions(draw: st.DrawFn) -> execution_pb2.PipelineExecution:
    msg = execution_pb2.PipelineExecution(
        execution_id=draw(ids),
        pipeline_id=draw(ids),
        team=draw(st.sampled_from(["core", "", " ", "ünï"])),
        status=draw(st.integers(-3, 7)),
        records_processed=draw(st.one_of(st.integers(0, 10**6), st.integers(-(2**63), 2**63 - 1))),
        upstream_pipeline_ids=draw(st.lists(texts, max_size=3)),
        labels=draw(st.dictionaries(texts, texts, max_size=3)),
        error_message=draw(st.text(max_size=3000) | st.just("boom")),
    )
    for name in ("started_at", "finished_at", "duration"):
        value = draw(timestamps)
        if value is not None:
            field = getattr(msg, name)
            field.seconds, field.nanos = value
    return msg


@st.composite
def plain_executions(draw: st.DrawFn) -> execution_pb2.PipelineExecution:
    """Events as runners send them, which convert takes: decode_rows must read these itself."""
    text = st.text(min_size=1, max_size=10).filter(lambda x: not x.isspace())
    msg = execution_pb2.PipelineExecution(
        execution_id=draw(text),
        pipeline_id=draw(text),
        team=draw(st.sampled_from(["core", "ünï", "data platform"])),
        status=draw(st.integers(1, 4)),
        records_processed=draw(st.integers(0, 2**63 - 1)),
        upstream_pipeline_ids=draw(st.lists(texts, max_size=3)),
        labels=draw(st.dictionaries(texts, texts, max_size=3)),
        error_message=draw(st.text(max_size=2000)),
    )
    start = draw(st.none() | st.integers(0, 2 * T0))
    if start is not None:
        msg.started_at.seconds, msg.started_at.nanos = start, draw(st.integers(0, 999_999_999))
    end = draw(st.none() | st.integers(start or 0, 2 * T0 + 10))
    if end is not None:
        msg.finished_at.seconds, msg.finished_at.nanos = end, draw(st.integers(0, 999_999_999))
    if draw(st.booleans()):
        msg.duration.seconds = draw(st.integers(0, 10**6))
        msg.duration.nanos = draw(st.integers(0, 999_999_999))
    return msg


@settings(max_examples=300, deadline=None)
@given(st.lists(plain_executions(), max_size=6), st.data())
def test_plain_requests_decode_as_protobuf_and_convert_read_them(
    msgs: list, data: st.DataObject
) -> None:
    raw = service_pb2.IngestRequest(executions=msgs).SerializeToString()
    mask = data.draw(st.one_of(st.just(b""), st.binary(min_size=len(msgs), max_size=len(msgs))))
    expected = _expected(raw, mask, RECEIVED)
    got = _check(raw, mask)
    # Only what convert refuses (finished before started, by nanoseconds) is left to it.
    assert (got is None) == (expected is None)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(executions(), plain_executions()), max_size=6), st.data())
def test_decoded_rows_are_protobufs_and_converts(msgs: list, data: st.DataObject) -> None:
    raw = service_pb2.IngestRequest(executions=msgs).SerializeToString()
    mask = data.draw(st.one_of(st.just(b""), st.binary(min_size=len(msgs), max_size=len(msgs))))
    _check(raw, mask)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
@example(b"\x0a\x05\x0a\x03\x80\x80\x80")  # a varint cut off inside an execution
@example(b"\x0a\x02\x2a\x00")  # an empty Timestamp
def test_any_bytes_give_protobufs_rows_or_none(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=200, deadline=None)
@given(st.lists(executions(), min_size=1, max_size=3), st.binary(min_size=1, max_size=20))
def test_a_request_with_bytes_spliced_in_gives_protobufs_rows_or_none(
    msgs: list, junk: bytes
) -> None:
    raw = service_pb2.IngestRequest(executions=msgs).SerializeToString()
    for at in (0, len(raw) // 2, len(raw)):
        _check(raw[:at] + junk + raw[at:])


def test_the_plain_case_is_decoded() -> None:
    """What runners send is read from the bytes, not left to protobuf: else replay gains
    nothing."""
    msgs = [
        run("e1", "p1", start=T0, records=5, labels={"env": "prod"}, upstream=["a", "b"]),
        run("e2", "p1", status="failed", start=T0 + 1, error_message="x" * 5000),
        run("e3", "p2", status="running", start=T0 + 2),
        run("e4", "p2", status="cancelled"),
    ]
    raw = service_pb2.IngestRequest(executions=msgs).SerializeToString()
    rows = _check(raw)
    assert rows is not None and [r[0] for r in rows] == ["e1", "e2", "e3", "e4"]
    assert len(rows[1][10]) == LIMITS.max_error_message_length
    assert _check(raw, b"\x00\x01\x00\x01") is not None
    assert [r[0] for r in _check(raw, b"\x00\x01\x00\x01") or []] == ["e2", "e4"]


def test_what_is_left_to_protobuf() -> None:
    plain = run("e1", "p1", start=T0)
    unknown = plain.SerializeToString() + b"\xa0\x06\x01"  # field 100, a varint
    twice = (
        plain.SerializeToString()
        + execution_pb2.PipelineExecution(started_at=plain.started_at).SerializeToString()
    )  # started_at twice: protobuf merges the two
    refused = run("", "p1").SerializeToString()  # convert refuses it
    for body in (unknown, twice, refused):
        raw = b"\x0a" + bytes([len(body)]) + body
        assert decode_rows(raw, b"", RECEIVED, 100) is None
        _check(raw)
    # A mask that does not match the events is left to protobuf too.
    raw = service_pb2.IngestRequest(executions=[plain]).SerializeToString()
    assert decode_rows(raw, b"\x01\x01", RECEIVED, 100) is None


def test_times_near_zero_come_out_bit_for_bit() -> None:
    """Where a float's rounding shows most: fractions of a second alone."""
    for nanos in (1, 3, 7, 123_456_789, 999_999_999, 10_000_001):
        msg = execution_pb2.PipelineExecution(execution_id="e", pipeline_id="p", team="t", status=1)
        msg.started_at.nanos = nanos
        msg.finished_at.seconds, msg.finished_at.nanos = 1, nanos
        msg.duration.nanos = nanos
        raw = service_pb2.IngestRequest(executions=[msg]).SerializeToString()
        assert _check(raw) is not None


def test_events_with_the_same_labels_share_one_dict() -> None:
    msgs = [run(f"e{i}", f"p{i}", labels={"env": "prod", "tier": "gold"}) for i in range(3)]
    msgs.append(run("e3", "p3", labels={"env": "dev"}))
    raw = service_pb2.IngestRequest(executions=msgs).SerializeToString()
    rows = _check(raw)
    assert rows is not None
    assert rows[0][9] is rows[1][9] is rows[2][9] and rows[3][9] == {"env": "dev"}


def test_labels_and_upstream_ids_split_by_other_fields() -> None:
    """Protobuf takes a map's entries and a repeated field's items wherever they come."""
    entry = execution_pb2.PipelineExecution(labels={"env": "prod"}).SerializeToString()
    other = execution_pb2.PipelineExecution(labels={"tier": "gold"}).SerializeToString()
    up_a = execution_pb2.PipelineExecution(upstream_pipeline_ids=["a"]).SerializeToString()
    up_b = execution_pb2.PipelineExecution(upstream_pipeline_ids=["b"]).SerializeToString()
    base = run("e1", "p1").SerializeToString()
    for body in (entry + base + other, up_a + base + up_b, entry + up_a + other + up_b + base):
        raw = b"\x0a" + bytes([len(body)]) + body
        assert _expected(raw, b"", RECEIVED) is not None
        _check(raw)
