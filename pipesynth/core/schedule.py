"""A schedule: for every device, the order in which it runs its passes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipesynth.core.problem import Op, Problem


@dataclass(frozen=True)
class Action:
    """One pass of one microbatch on one stage; `start`/`end` are planned times."""

    op: Op
    stage: int
    mb: int
    start: float | None = None
    end: float | None = None

    @property
    def key(self) -> tuple[Op, int, int]:
        """Identity of the pass, whatever its planned times."""
        return (self.op, self.stage, self.mb)

    def __str__(self) -> str:
        return f"{self.op} of stage {self.stage} microbatch {self.mb}"


@dataclass(frozen=True)
class Metrics:
    """The figures of docs/design.md section 2 for one iteration."""

    makespan: float
    bubble_rate: float
    peak_memory: tuple[float, ...]


@dataclass
class Schedule:
    """Per-device ordered action lists for a problem, plus what produced them."""

    problem: Problem
    actions: list[list[Action]]
    name: str = ""
    metrics: Metrics | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def all_actions(self) -> list[Action]:
        return [a for device_actions in self.actions for a in device_actions]

    @property
    def num_actions(self) -> int:
        return sum(len(device_actions) for device_actions in self.actions)
