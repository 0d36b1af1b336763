"""The numbers and names of the API's severities and anomaly kinds, in one place.

The numbers are those of the `pipewarden.v1` enums `Severity` and `AnomalyKind` (a test checks
that they agree), so the server's domain, the notifiers and the command line use them without a
table to translate. A name is the enum value's without its prefix, in lower case: `critical`,
`consecutive_failures`. Plain constants, no protobuf import: the compiled core and the detectors
read them.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CONSECUTIVE_FAILURES",
    "CRITICAL",
    "DURATION_REGRESSION",
    "HIGH",
    "HIGH_DURATION",
    "KIND_NAMES",
    "LOW_RECORDS",
    "LOW_SUCCESS_RATE",
    "MEDIUM",
    "SEVERITIES",
    "SEVERITY_LEVELS",
    "SEVERITY_NAMES",
    "STALE",
    "STUCK_RUN",
    "VOLUME_DROP",
    "kind_name",
    "kind_number",
    "severity_name",
]

# pipewarden.v1.Severity
MEDIUM: Final = 1
HIGH: Final = 2
CRITICAL: Final = 3

SEVERITY_NAMES: Final[dict[int, str]] = {MEDIUM: "medium", HIGH: "high", CRITICAL: "critical"}
"""Severity number → name."""
SEVERITY_LEVELS: Final[dict[str, int]] = {name: n for n, name in SEVERITY_NAMES.items()}
"""Severity name → number."""
SEVERITIES: Final[tuple[str, ...]] = tuple(SEVERITY_NAMES.values())
"""The severities' names, least severe first."""

# pipewarden.v1.AnomalyKind
LOW_SUCCESS_RATE: Final = 1
HIGH_DURATION: Final = 2
LOW_RECORDS: Final = 3
CONSECUTIVE_FAILURES: Final = 4
DURATION_REGRESSION: Final = 5
VOLUME_DROP: Final = 6
STALE: Final = 7
STUCK_RUN: Final = 8

KIND_NAMES: Final[dict[int, str]] = {
    LOW_SUCCESS_RATE: "low_success_rate",
    HIGH_DURATION: "high_duration",
    LOW_RECORDS: "low_records",
    CONSECUTIVE_FAILURES: "consecutive_failures",
    DURATION_REGRESSION: "duration_regression",
    VOLUME_DROP: "volume_drop",
    STALE: "stale",
    STUCK_RUN: "stuck_run",
}
"""Anomaly kind number → name."""


def severity_name(number: int) -> str:
    """`critical`, `high`, `medium`; `unspecified` for 0 and the number for one unknown here."""
    return SEVERITY_NAMES.get(number) or ("unspecified" if number == 0 else str(number))


def kind_name(number: int) -> str:
    """`consecutive_failures` and so on; `unspecified` for 0 and the number for one unknown."""
    return KIND_NAMES.get(number) or ("unspecified" if number == 0 else str(number))


def kind_number(name: str) -> int | None:
    """The kind a person named (`stale`, `Stuck run`, `consecutive-failures`), or None."""
    wanted = name.strip().lower().replace(" ", "_").replace("-", "_")
    return next((n for n, known in KIND_NAMES.items() if known == wanted), None)
