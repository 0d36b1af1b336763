"""Fuzzing a real `pipewarden serve` process with hypothesis: random bytes to every method, and
valid protobuf with extreme values (huge and odd Unicode strings, undefined enum numbers,
negative numbers, timestamps far in the past and the future, thousands of labels). The server
must stay up, answer with OK or a clear status (never UNKNOWN or INTERNAL), and the totals of
pipelines the fuzzing did not name must not move."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipewarden.v1 import service_pb2
from tests.helpers import request, run
from tests.process import ServerProcess

SERVICE = service_pb2.DESCRIPTOR.services_by_name["PipelineMonitor"]
METHODS = {m.name: m for m in SERVICE.methods}
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}
SENTINEL_TEAM = "sentinel-team"
SENTINELS = [f"sentinel-{i}" for i in range(3)]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)

ODD = [
    "",
    "\x00",
    "\u202e\u202d",  # bidirectional overrides
    "e\u0301\u0301\u0301",  # stacked combining marks
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a joined emoji
    "\ufeff\ufffe\uffff",
    "\U0010ffff",
    "Ω" * 5000,
    "x" * 300_000,
]
strings = st.one_of(st.text(max_size=40), st.sampled_from(ODD))
INT_BOUNDS = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    extremes = [x for x in (lo, hi, -1, 0, 1, lo + 1, hi - 1, 253402300800) if lo <= x <= hi]
    return st.one_of(st.sampled_from(extremes), st.integers(lo, hi))


def _scalar(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == d.FieldDescriptor.TYPE_STRING:
        return strings
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if t == d.FieldDescriptor.TYPE_FLOAT else 64)
    if t == d.FieldDescriptor.TYPE_ENUM:
        return st.one_of(
            st.sampled_from([v.number for v in field.enum_type.values]),
            st.integers(-(2**31), 2**31 - 1),  # undefined numbers too
        )
    return _ints(*INT_BOUNDS[t])


@st.composite
def messages(draw: st.DrawFn, desc: d.Descriptor, depth: int = 0) -> Message:
    """A message of type `desc` with every field maybe set to an extreme value."""
    msg = message_factory.GetMessageClass(desc)()
    for field in desc.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            n = draw(st.sampled_from([0, 1, 3, 5000]))
            keys = draw(st.lists(strings, min_size=min(n, 3), max_size=min(n, 3)))
            target = getattr(msg, field.name)
            for i in range(n):
                target[keys[i] if i < len(keys) else f"k{i}"] = draw(strings) if i < 3 else "v"
        elif field.message_type is not None:
            if depth > 3:
                continue
            count = draw(st.integers(0, 4)) if field.is_repeated else 1
            for _ in range(count):
                value = draw(messages(field.message_type, depth + 1))
                if field.is_repeated:
                    getattr(msg, field.name).add().CopyFrom(value)
                else:
                    getattr(msg, field.name).CopyFrom(value)
        elif field.is_repeated:
            size = draw(st.sampled_from([0, 1, 2, 3000]))
            getattr(msg, field.name).extend(
                draw(_scalar(field)) if i < 3 else f"u{i}" for i in range(size)
            )
        else:
            setattr(msg, field.name, draw(_scalar(field)))
    return msg


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data")
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        server.target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as ch:
        stub = _raw(ch, "Ingest")
        executions = [
            run(f"s{i}-{j}", pid, SENTINEL_TEAM, "failed" if j % 3 == 0 else "succeeded")
            for i, pid in enumerate(SENTINELS)
            for j in range(5)
        ]
        stub(request(*executions).SerializeToString(), timeout=10)
        yield ch


def _raw(channel: grpc.Channel, name: str) -> Any:
    path = f"/{SERVICE.full_name}/{name}"
    m = METHODS[name]
    if m.client_streaming:
        return channel.stream_stream(path)
    if m.server_streaming:
        return channel.unary_stream(path)
    return channel.unary_unary(path)


def _sentinels(channel: grpc.Channel) -> list[bytes]:
    get = _raw(channel, "GetPipelineHealth")
    team = _raw(channel, "GetTeamMetrics")
    return [
        get(service_pb2.GetPipelineHealthRequest(pipeline_id=p).SerializeToString(), timeout=10)
        for p in SENTINELS
    ] + [team(service_pb2.GetTeamMetricsRequest(team=SENTINEL_TEAM).SerializeToString())]


def _call(channel: grpc.Channel, name: str, payload: bytes) -> grpc.StatusCode:
    """Send one request's bytes; the status it ends with."""
    m = METHODS[name]
    stub = _raw(channel, name)
    try:
        if m.client_streaming:
            for _ in stub(iter([payload, payload]), timeout=10):
                pass
        elif m.server_streaming:
            # A valid watch never ends by itself: a short deadline ends it.
            for _ in stub(payload, timeout=0.15):
                pass
        else:
            stub(payload, timeout=10)
    except grpc.RpcError as e:
        code = e.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and m.server_streaming:
            return grpc.StatusCode.OK
        return code  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _check(server: ServerProcess, channel: grpc.Channel, name: str, payload: bytes) -> None:
    code = _call(channel, name, payload)
    assert code not in FORBIDDEN, f"{name} answered {code.name} to {payload[:200]!r}"
    assert server.proc.poll() is None, server.log()[-3000:]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_random_bytes(server: ServerProcess, channel: grpc.Channel, name: str) -> None:
    before = _sentinels(channel)

    @settings(FUZZ, max_examples=25)
    @given(st.binary(max_size=512))
    def fuzz(payload: bytes) -> None:
        _check(server, channel, name, payload)

    fuzz()
    assert _sentinels(channel) == before


@pytest.mark.parametrize("name", sorted(METHODS))
def test_valid_protobuf_with_extreme_values(
    server: ServerProcess, channel: grpc.Channel, name: str
) -> None:
    before = _sentinels(channel)
    input_type = METHODS[name].input_type
    max_examples = 120 if name in ("Ingest", "StreamIngest") else 30

    @settings(FUZZ, max_examples=max_examples)
    @given(messages(input_type))
    def fuzz(message: Message) -> None:
        _check(server, channel, name, message.SerializeToString())

    fuzz()
    assert _sentinels(channel) == before
    assert "Traceback" not in server.log()


def test_the_fuzzing_reaches_the_limits(server: ServerProcess, channel: grpc.Channel) -> None:
    """The strategies do produce what the limits refuse, so the runs above exercised them."""
    huge = request(run("h1", "fz-huge", "fz", labels={f"k{i}": "v" for i in range(5000)}))
    answer = service_pb2.IngestResponse.FromString(
        _raw(channel, "Ingest")(huge.SerializeToString(), timeout=10)
    )
    assert answer.rejected and "label" in answer.rejected[0].reason
