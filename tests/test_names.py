"""The one table of severity and anomaly-kind names agrees with the API's enums."""

from __future__ import annotations

import pytest

from pipewarden import names
from pipewarden.v1 import anomaly_pb2


def test_severity_numbers_and_names_are_the_protos() -> None:
    from_proto = {
        number: name.removeprefix("SEVERITY_").lower()
        for name, number in anomaly_pb2.Severity.items()
        if number
    }
    assert from_proto == names.SEVERITY_NAMES
    assert (names.MEDIUM, names.HIGH, names.CRITICAL) == (
        anomaly_pb2.SEVERITY_MEDIUM,
        anomaly_pb2.SEVERITY_HIGH,
        anomaly_pb2.SEVERITY_CRITICAL,
    )
    assert names.SEVERITIES == ("medium", "high", "critical")
    assert {n: names.SEVERITY_LEVELS[s] for n, s in from_proto.items()} == {
        n: n for n in from_proto
    }


def test_kind_numbers_and_names_are_the_protos() -> None:
    from_proto = {
        number: name.removeprefix("ANOMALY_KIND_").lower()
        for name, number in anomaly_pb2.AnomalyKind.items()
        if number
    }
    assert from_proto == names.KIND_NAMES
    for number, name in from_proto.items():
        assert getattr(names, name.upper()) == number


@pytest.mark.parametrize(
    ("given", "number"),
    [
        ("stale", names.STALE),
        ("Stuck run", names.STUCK_RUN),
        ("consecutive-failures", names.CONSECUTIVE_FAILURES),
        (" LOW_RECORDS ", names.LOW_RECORDS),
        ("bogus", None),
        ("", None),
    ],
)
def test_a_kind_as_people_write_it(given: str, number: int | None) -> None:
    assert names.kind_number(given) == number


def test_names_of_numbers_the_table_lacks() -> None:
    assert names.severity_name(0) == "unspecified"
    assert names.severity_name(9) == "9"
    assert names.kind_name(names.VOLUME_DROP) == "volume_drop"
    assert names.kind_name(0) == "unspecified"
    assert names.kind_name(42) == "42"
