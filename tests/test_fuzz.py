"""Fuzzing a real `pipewarden serve` process with hypothesis: random bytes to every method, and
valid protobuf with extreme values (huge and odd Unicode strings, undefined enum numbers,
negative numbers, timestamps far in the past and the future, thousands of labels). The server
must stay up, answer with OK or a clear status (never UNKNOWN or INTERNAL), and the totals of
pipelines the fuzzing did not name must not move.

And every Timestamp, Duration and string of every request, found by walking the descriptors, at
and beyond its limit (the range's ends, int64's, nanos out of range, one character past a string's
limit, control characters, a lone surrogate on the wire): what is beyond is refused naming the
field (a rejected row, for an execution), and the server's state stays readable."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipewarden.server.api.requestlimits import DEFAULT_STRING_LENGTH, string_limits
from pipewarden.server.core.limits import IngestLimits
from pipewarden.server.core.validation import MAX_DURATION_SECONDS, MAX_SECONDS, MIN_SECONDS
from pipewarden.v1 import alert_pb2, service_pb2
from tests.support.helpers import request, run
from tests.support.process import ServerProcess

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


# -- every client time and string, at and beyond its limit ----------------------------------------
#
# The walk is driven by the request types' descriptors: a Timestamp, Duration or string field
# added to any request (or to PipelineExecution) is covered without a change here.

TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
LIMITS = IngestLimits()
REQUEST_STRINGS = string_limits(LIMITS)
EXECUTION_STRINGS = {
    "execution_id": LIMITS.max_id_length,
    "pipeline_id": LIMITS.max_id_length,
    "team": LIMITS.max_team_length,
    "upstream_pipeline_ids": LIMITS.max_id_length,
    "labels": LIMITS.max_label_length,
}
TRUNCATED = {"error_message"}  # kept, cut to max_error_message_length
OK_ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,  # a well-formed name of nothing
    grpc.StatusCode.FAILED_PRECONDITION,
}
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
SURROGATE = "\u2603"  # three bytes of UTF-8, swapped for a lone surrogate's on the wire
CONTROL = "a\nb\rc\x00d\x1b[31m\u202e"


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A Timestamp, Duration or string somewhere in a method's request."""

    method: str
    path: tuple[d.FieldDescriptor, ...]
    kind: str  # timestamp, duration, string, key (of a map) or value (of a map)

    @property
    def name(self) -> str:
        return ".".join(f.name for f in self.path)

    @property
    def in_execution(self) -> bool:
        return any(f.containing_type.full_name.endswith("PipelineExecution") for f in self.path)

    def limit(self) -> int | None:
        """The longest string the server takes here; None where longer ones are cut."""
        field = self.path[-1].name
        if not self.in_execution:
            return REQUEST_STRINGS.get(field, DEFAULT_STRING_LENGTH)
        if field in TRUNCATED:
            return None
        return EXECUTION_STRINGS[field]  # a new execution string without a limit fails here

    def __repr__(self) -> str:
        return f"{self.method}:{self.name}:{self.kind}"


def _leaves(desc: d.Descriptor, prefix: tuple[d.FieldDescriptor, ...] = ()) -> Iterator[Any]:
    for field in desc.fields:
        path = (*prefix, field)
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            yield path, "key"
            if sub.fields_by_name["value"].type == d.FieldDescriptor.TYPE_STRING:
                yield path, "value"
        elif sub is not None and sub.full_name == TIMESTAMP:
            yield path, "timestamp"
        elif sub is not None and sub.full_name == DURATION:
            yield path, "duration"
        elif sub is not None and all(f.message_type != sub for f in prefix):
            yield from _leaves(sub, path)
        elif field.type == d.FieldDescriptor.TYPE_STRING:
            yield path, "string"


LEAVES = [
    Leaf(name, path, kind)
    for name, method in sorted(METHODS.items())
    for path, kind in _leaves(method.input_type)
]


def _base(method: str) -> Message:
    """A request of `method` that is well-formed but for the leaf placed in it."""
    now = int(time.time())
    execution = run("fz-0", "fz-pipe", "fz-team", "failed", error_message="boom")
    bases: dict[str, Message] = {
        "Ingest": service_pb2.IngestRequest(executions=[execution]),
        "StreamIngest": service_pb2.IngestRequest(executions=[execution]),
        "CreateSilence": service_pb2.CreateSilenceRequest(
            silence=alert_pb2.Silence(
                team="fz-team", created_by="fz", ends_at=Timestamp(seconds=now + 3600)
            )
        ),
        "AcknowledgeAlert": service_pb2.AcknowledgeAlertRequest(alert_id="a-none", by="fz"),
        "DeleteSilence": service_pb2.DeleteSilenceRequest(silence_id="s-none", by="fz"),
    }
    return bases.get(method) or message_factory.GetMessageClass(METHODS[method].input_type)()


def _place(msg: Message, leaf: Leaf, value: Any) -> None:
    for field in leaf.path[:-1]:
        if field.is_repeated:
            items = getattr(msg, field.name)
            msg = items[0] if len(items) else items.add()
        else:
            msg = getattr(msg, field.name)
    last = leaf.path[-1]
    if leaf.kind in ("timestamp", "duration"):
        target = getattr(msg, last.name)
        target = target.add() if last.is_repeated else target
        target.seconds, target.nanos = value
    elif leaf.kind == "key":
        getattr(msg, last.name)[value] = "v"
    elif leaf.kind == "value":
        getattr(msg, last.name)["k"] = value
    elif last.is_repeated:
        getattr(msg, last.name).append(value)
    else:
        setattr(msg, last.name, value)


def _times(kind: str) -> list[tuple[tuple[int, int], bool]]:
    """(seconds, nanos) at and beyond the range of `kind`, each with whether it is beyond."""
    if kind == "timestamp":
        lo, hi = MIN_SECONDS, MAX_SECONDS
        within = [(lo, 0), (hi, 999_999_999), (0, 0), (int(time.time()), 5)]
        beyond = [(lo - 1, 0), (hi + 1, 0), (10**17, 0), (INT64[1], 0), (INT64[0], 0)]
        beyond += [(0, 1_000_000_000), (0, -1), (0, INT32[1]), (0, INT32[0])]
    else:
        top = MAX_DURATION_SECONDS
        within = [(0, 0), (1, 5), (top, 999_999_999)]
        beyond = [(top + 1, 0), (INT64[1], 0), (INT64[0], 0), (-top - 1, 0), (1, -1), (-1, 1)]
        beyond += [(0, 1_000_000_000), (0, INT32[0])]
    return [(v, False) for v in within] + [(v, True) for v in beyond]


def _strings(leaf: Leaf) -> list[tuple[str, bool]]:
    """Strings at and one past the leaf's limit, control characters and a lone surrogate."""
    limit = leaf.limit()
    cases = [(CONTROL, False), (SURROGATE, False)]
    if limit is None:
        return [*cases, ("e" * (LIMITS.max_error_message_length + 1), False)]
    return [*cases, ("x" * limit, False), ("x" * (limit + 1), True)]


def _values(leaf: Leaf) -> list[tuple[Any, bool]]:
    if leaf.kind in ("timestamp", "duration"):
        return list(_times(leaf.kind))
    return list(_strings(leaf))


def _negative_duration_beyond(leaf: Leaf, value: Any) -> bool:
    """An execution's duration must not be negative either."""
    return leaf.kind == "duration" and leaf.in_execution and (value[0] < 0 or value[1] < 0)


def _wire(msg: Message) -> bytes:
    raw = msg.SerializeToString()
    # protobuf does not let a lone surrogate through from Python: put one on the wire by hand.
    return raw.replace(SURROGATE.encode(), b"\xed\xa0\x80")


def _answer(channel: grpc.Channel, leaf: Leaf, payload: bytes) -> tuple[Any, str, list[bytes]]:
    """The status, its message and the responses of one call."""
    stub = _raw(channel, leaf.method)
    m = METHODS[leaf.method]
    try:
        if m.client_streaming:
            return grpc.StatusCode.OK, "", list(stub(iter([payload]), timeout=10))
        if m.server_streaming:
            return grpc.StatusCode.OK, "", list(stub(payload, timeout=0.15))
        return grpc.StatusCode.OK, "", [stub(payload, timeout=10)]
    except grpc.RpcError as e:
        code = e.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and m.server_streaming:
            return grpc.StatusCode.OK, "", []
        return code, e.details() or "", []  # type: ignore[attr-defined]


def _check_leaf(
    server: ServerProcess, channel: grpc.Channel, leaf: Leaf, value: Any, beyond: bool
) -> None:
    msg = _base(leaf.method)
    _place(msg, leaf, value)
    code, details, responses = _answer(channel, leaf, _wire(msg))
    shown = f"{leaf!r} = {str(value)[:60]!r}"
    assert code in OK_ANSWERS, f"{shown}: {code.name} {details}"
    assert code == grpc.StatusCode.OK or details, f"{shown}: {code.name} without a message"
    assert server.proc.poll() is None, server.log()[-3000:]
    if SURROGATE in str(value):
        assert code in REFUSALS, f"{shown}: {code.name}"  # not valid UTF-8: undecodable
    elif beyond or _negative_duration_beyond(leaf, value):
        word = leaf.path[-1].name
        word = word.removesuffix("s") if leaf.kind in ("key", "value") else word
        if leaf.in_execution and code == grpc.StatusCode.OK:
            (answer,) = (service_pb2.IngestResponse.FromString(r) for r in responses)
            assert answer.rejected, f"{shown}: accepted"
            assert word in answer.rejected[0].reason, f"{shown}: {answer.rejected[0].reason}"
        else:
            assert code in REFUSALS, f"{shown}: {code.name}"
            assert word in details, f"{shown}: {details}"


def _whole(server: ServerProcess, channel: grpc.Channel) -> None:
    """The server is up and its state readable."""
    for name, req in (
        ("ListSilences", service_pb2.ListSilencesRequest()),
        ("ListAlerts", service_pb2.ListAlertsRequest()),
        ("ListPipelineHealth", service_pb2.ListPipelineHealthRequest()),
        ("ListTeamMetrics", service_pb2.ListTeamMetricsRequest()),
    ):
        _raw(channel, name)(req.SerializeToString(), timeout=10)
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert server.proc.poll() is None
    assert "Traceback" not in server.log()


def test_the_walk_finds_every_time_and_string() -> None:
    found = {repr(leaf) for leaf in LEAVES}
    assert "CreateSilence:silence.ends_at:timestamp" in found
    assert "Ingest:executions.duration:duration" in found
    assert "StreamIngest:executions.labels:key" in found
    assert "AcknowledgeAlert:by:string" in found
    assert "ListPipelineHealth:page_token:string" in found


@pytest.mark.parametrize("name", sorted({leaf.method for leaf in LEAVES}))
def test_every_time_and_string_at_and_beyond_its_limit(
    server: ServerProcess, channel: grpc.Channel, name: str
) -> None:
    before = _sentinels(channel)
    for leaf in (leaf for leaf in LEAVES if leaf.method == name):
        for value, beyond in _values(leaf):
            _check_leaf(server, channel, leaf, value, beyond)
    _whole(server, channel)
    assert _sentinels(channel) == before


@st.composite
def _around_limits(draw: st.DrawFn) -> tuple[Leaf, Any, bool]:
    leaf = draw(st.sampled_from(LEAVES))
    if leaf.kind in ("timestamp", "duration"):
        top = MAX_SECONDS if leaf.kind == "timestamp" else MAX_DURATION_SECONDS
        low = MIN_SECONDS if leaf.kind == "timestamp" else -MAX_DURATION_SECONDS
        seconds = draw(st.one_of(st.integers(low - 3, low + 3), st.integers(top - 3, top + 3)))
        nanos = draw(st.one_of(st.integers(-2, 2), st.integers(999_999_997, 1_000_000_002)))
        value: Any = (seconds, nanos)
        if leaf.kind == "timestamp":
            beyond = not (low <= seconds <= top and 0 <= nanos <= 999_999_999)
        else:
            beyond = not (abs(seconds) <= top and abs(nanos) <= 999_999_999) or (
                seconds * nanos < 0
            )
        return leaf, value, beyond
    limit = leaf.limit()
    top = LIMITS.max_error_message_length if limit is None else limit
    size = draw(st.integers(max(top - 2, 0), top + 2))
    text = draw(st.text(min_size=1, max_size=3)) * size
    text = text[:size] if size else "x"
    return leaf, text, limit is not None and len(text) > limit


def test_random_values_around_the_limits(server: ServerProcess, channel: grpc.Channel) -> None:
    before = _sentinels(channel)

    @settings(FUZZ, max_examples=150)
    @given(_around_limits())
    def fuzz(case: tuple[Leaf, Any, bool]) -> None:
        leaf, value, beyond = case
        _check_leaf(server, channel, leaf, value, beyond)

    fuzz()
    _whole(server, channel)
    assert _sentinels(channel) == before
