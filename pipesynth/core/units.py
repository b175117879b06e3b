"""Units of a problem's numbers, and byte sizes as people write them ("12GiB").

A problem from the generators has abstract units (a pass costs 1, a stage
holds 1); a profiled problem states its units (time in microseconds, memory
in bytes) so a cap can be given in bytes and messages can print bytes.
"""

from __future__ import annotations

import math
import re
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


def format_bytes(value: float) -> str:
    """`12884901888` -> `12 GiB (12884901888 bytes)`: readable, and exact for copying into a command."""
    size = float(value)
    for suffix in ("TiB", "GiB", "MiB", "KiB"):
        scale = _BYTE_SUFFIXES[suffix.lower()]
        if size >= scale:
            return f"{size / scale:.4g} {suffix} ({size:.0f} bytes)"
    return f"{size:.0f} bytes"
