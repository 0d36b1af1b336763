"""The issue's targets for the default configuration, checked against the scores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from eval.score import TrapScore, TypeScore

__all__ = ["Check", "check"]

_QUALITY = {
    "failures": 0.95,
    "regression": 0.95,
    "drop": 0.95,
    "stale": 0.9,
    "stuck": 0.9,
}
"""Least precision and recall per fault type (falling_success has no target: it is reported)."""
_TRAPS = 0.05
"""Most traps flagged."""
_PEER_TYPES = ("failures", "falling_success", "regression", "drop")
"""The fault types the peer rule can detect, on which the default must have a higher F1."""


@dataclass(frozen=True)
class Check:
    """One target and how the default configuration did."""

    name: str
    value: float | None
    target: str
    passed: bool


def check(
    default: Mapping[str, TypeScore], default_traps: TrapScore, peer: Mapping[str, TypeScore]
) -> list[Check]:
    """Every target, in the report's order."""
    out: list[Check] = []
    for fault, least in _QUALITY.items():
        s = default.get(fault)
        if s is None:
            continue
        p = s.precision
        out.append(Check(f"{fault}: precision", p, f">= {least}", p is not None and p >= least))
        out.append(Check(f"{fault}: recall", s.recall, f">= {least}", s.recall >= least))
    out.append(
        Check("traps flagged (any kind)", default_traps.share, f"<= {_TRAPS:.0%}",
              default_traps.share <= _TRAPS)
    )  # fmt: skip
    for fault in _PEER_TYPES:
        if fault in default and fault in peer:
            mine, theirs = default[fault].f1, peer[fault].f1
            out.append(Check(f"{fault}: F1 above the peer rule's {theirs:.2f}", mine,
                             f"> {theirs:.2f}", mine > theirs))  # fmt: skip
    return out
