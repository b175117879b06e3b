"""The problem in integers, as CP-SAT needs them.

Costs and comm share one time scale, activations and caps one memory scale:
the smallest power-of-ten-ish factor that makes them all whole numbers. When
none up to 1000 does, values are rounded at that factor; the solver's times
are then approximate, which is harmless because every result is re-simulated
with the real costs and validated before it is returned (`exact` says which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import PassId, crosses_devices, edges, released

FACTORS = (1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 200, 250, 500, 1000)


def _factor(values: list[float]) -> tuple[int, bool]:
    """The smallest factor making every value integral, and whether one exists."""
    for f in FACTORS:
        if all(abs(v * f - round(v * f)) < 1e-9 for v in values):
            return f, True
    return FACTORS[-1], False


@dataclass(frozen=True)
class Scaled:
    """Integer costs, comm, activations and caps of a Problem."""

    problem: Problem
    time_scale: int
    memory_scale: int
    exact: bool
    cost: dict[Op, tuple[int, ...]]
    comm: int
    activation: tuple[int, ...]
    kept: tuple[int, ...]
    cap: tuple[int, ...] | None

    @staticmethod
    def of(problem: Problem) -> Scaled:
        times = [*problem.cost_f, *problem.cost_b, *problem.cost_w, problem.comm]
        tf, t_exact = _factor(times)
        mems = [*problem.activation, *problem.kept_for_w]
        mf, m_exact = _factor(mems)
        cost = {
            "F": tuple(round(c * tf) for c in problem.cost_f),
            "B": tuple(round(c * tf) for c in problem.cost_b),
            "W": tuple(round(c * tf) for c in problem.cost_w),
        }
        # Activations round up and caps down, so an inexact scale errs on the safe side.
        act = tuple(math.ceil(a * mf - 1e-9) for a in problem.activation)
        kept = tuple(min(k, a) for k, a in zip((round(k * mf) for k in problem.kept_for_w), act))
        cap = None if problem.cap is None else tuple(math.floor(c * mf + 1e-9) for c in problem.cap)
        return Scaled(problem, tf, mf, t_exact and m_exact, cost, round(problem.comm * tf), act, kept, cap)

    def c(self, op: Op, stage: int) -> int:
        return self.cost[op][stage]

    def link(self, a: int, b: int) -> int:
        """Comm time of a dependency from stage a to stage b."""
        return self.comm if crosses_devices(self.problem, a, b) else 0

    def release(self, op: Op, stage: int) -> int:
        """Memory the pass frees once it has run (rules.released on the scaled numbers)."""
        return released(op, self.activation[stage], self.kept[stage], self.problem.split_backward)

    def edges(self) -> list[tuple[PassId, PassId, int]]:
        """One microbatch's dependencies (before, after, comm delay)."""
        return [(a, b, self.link(a[1], b[1])) for a, b in edges(self.problem)]

    def integer_problem(self) -> Problem:
        """The problem in these integers (costs, comm, activations, caps), for the bounds' grid."""
        return replace(
            self.problem,
            cost_f=tuple(map(float, self.cost["F"])),
            cost_b=tuple(map(float, self.cost["B"])),
            cost_w=tuple(map(float, self.cost["W"])),
            comm=float(self.comm),
            activation=tuple(map(float, self.activation)),
            kept_for_w=tuple(map(float, self.kept)),
            cap=None if self.cap is None else tuple(map(float, self.cap)),
        )

    def passes(self) -> list[PassId]:
        return [(op, s) for s in range(self.problem.stages) for op in self.problem.ops]
