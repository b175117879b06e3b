"""Parsing of the option values shared by several commands."""

from __future__ import annotations

import math

from pipesynth.core.problem import OPS, PerStage
from pipesynth.errors import PipesynthError


def parse_numbers(text: str, field: str) -> PerStage:
    """`3` -> 3.0; `1:1:2` -> [1.0, 1.0, 2.0] (one value per stage)."""
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise PipesynthError(f"{field}: cannot read {text!r} as a number or a colon-separated list") from None
    if not all(math.isfinite(v) for v in values):
        raise PipesynthError(f"{field}: {text!r} is not a finite number")
    return values[0] if len(values) == 1 else values


def parse_cost(text: str | None) -> dict[str, PerStage]:
    """`F=3,B=4,W=2` (per-stage lists as `F=1:1:2`) -> {"F": 3.0, ...}."""
    if not text:
        return {}
    cost: dict[str, PerStage] = {}
    for item in text.split(","):
        op, sep, value = item.partition("=")
        op = op.strip().upper()
        if not sep or op not in OPS:
            raise PipesynthError(f"--cost: cannot read {item!r}; expected e.g. F=3,B=4,W=2")
        cost[op] = parse_numbers(value.strip(), f"--cost {op}")
    return cost


def parse_cap_option(text: str | None) -> str | PerStage | None:
    """`--cap`: `6`, one per device `6:6:4:4`, or relative to 1F1B's peak `0.5x`."""
    if text is None:
        return None
    if text.strip().lower().endswith("x"):
        return text
    return parse_numbers(text, "--cap")
