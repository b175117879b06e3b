"""Units of a problem's numbers, and how every command prints them (docs/design.md section 2).

A problem from the generators has abstract units: time in the unit of its
pass costs ("time units"), memory in chunk units (one microbatch's
activation of one stage whose activation is 1). A profiled problem states
its units (time in microseconds, memory in bytes), so a cap can be given in
bytes and every figure prints with its unit: times humanised (us, ms, s),
bytes humanised (KiB, MiB, GiB).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipesynth.errors import PipesynthError

_BYTE_SUFFIXES = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*([a-z]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Units:
    """What one unit of time and of memory means in a problem (written as the `units` object)."""

    time: str = "us"
    memory: str = "bytes"

    @property
    def bytes(self) -> bool:
        return self.memory == "bytes"


PROFILED = Units(time="us", memory="bytes")

#: The labels of abstract units (a problem without `units`).
ABSTRACT_TIME = "time units"
ABSTRACT_MEMORY = "chunk units"

#: Seconds per time unit, for the units that can be humanised.
_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_bytes(text: str) -> float | None:
    """`12GiB` -> 12884901888.0; None when `text` has no byte suffix (a plain number)."""
    match = _SIZE.match(text)
    if match is None:
        return None
    number, exponent, suffix = match.groups()
    factor = _BYTE_SUFFIXES.get(suffix.lower())
    if factor is None:
        known = ", ".join(s if s == "b" else s[0].upper() + s[1:-1] + "B" for s in _BYTE_SUFFIXES)
        raise PipesynthError(f"memory: unknown size suffix {suffix!r} in {text!r}; use one of {known}")
    value = float(f"{number}e{exponent or 0}") * factor  # a float exponent: 1e400 is inf, not a 400-digit int
    if not math.isfinite(value):
        raise PipesynthError(f"memory: {text!r} is out of range")
    return value


def byte_scale(value: float) -> tuple[float, str]:
    """The binary suffix that reads best for `value` bytes, and its size: (2**20, "MiB")."""
    for suffix in ("TiB", "GiB", "MiB", "KiB"):
        scale = _BYTE_SUFFIXES[suffix.lower()]
        if abs(value) >= scale:
            return scale, suffix
    return 1, "bytes"


def format_bytes(value: float, exact: bool = True) -> str:
    """`12884901888` -> `12 GiB (12884901888 bytes)`: readable, and exact for copying into a command.

    `exact=False` drops the byte count: `12 GiB`.
    """
    size = float(value)
    scale, suffix = byte_scale(size)
    if scale == 1:
        return f"{size:.0f} bytes"
    return f"{size / scale:.4g} {suffix}" + (f" ({size:.0f} bytes)" if exact else "")


def time_label(units: Units | None) -> str:
    """What a time figure of this problem is in: `us`, or `time units` when abstract."""
    return ABSTRACT_TIME if units is None else units.time


def memory_label(units: Units | None) -> str:
    """What a memory figure of this problem is in: `bytes`, or `chunk units` when abstract."""
    return ABSTRACT_MEMORY if units is None else units.memory


def time_scale(span: float, units: Units | None) -> tuple[float, str]:
    """(divisor, unit) to show times up to `span` readably: (1000, "ms") for 12345 us; (1, label) otherwise."""
    per_unit = None if units is None else _SECONDS.get(units.time)
    if per_unit is None:
        return 1.0, time_label(units)
    seconds = abs(span) * per_unit
    for name in ("s", "ms", "us", "ns"):
        if seconds >= _SECONDS[name] or name == "ns":
            return _SECONDS[name] / per_unit, name
    raise AssertionError("unreachable")


def format_time(value: float, units: Units | None) -> str:
    """`53` (abstract: the unit goes in a label), `12.35 ms` (12345 us), `850 us`."""
    if units is None:
        return f"{value:g}"
    divisor, name = time_scale(value, units)
    return f"{value / divisor:.4g} {name}"


def format_memories(values: Sequence[float], units: Units | None) -> str:
    """Per-device figures with one unit: `6/6/6/6 chunk units`, `8.57/8.57/4.2 MiB`."""
    if units is not None and units.bytes:
        scale, suffix = byte_scale(max(values, default=0.0))
        return "/".join(f"{v / scale:.4g}" for v in values) + f" {suffix}"
    return "/".join(f"{v:g}" for v in values) + f" {memory_label(units)}"


def format_memory(value: float, units: Units | None) -> str:
    """One memory figure with its unit: `6 chunk units`, `8.567 MiB`."""
    return format_memories([value], units)
