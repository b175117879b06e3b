"""What no schedule can beat: the makespan lower bound and the smallest feasible cap.

Every argument here holds for every schedule of the problem (docs/design.md
section 4, "Lower bounds"), whatever the solver finds. `lower_bound` runs
them all and says which one gave the bound.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import chain_order
from pipesynth.core.units import format_bytes
from pipesynth.errors import InfeasibleError
from pipesynth.solver.grid import Grid, grid, heads_and_tails
from pipesynth.solver.memory_bounds import memory_area, memory_ramp
from pipesynth.solver.scaled import Scaled

__all__ = ["LowerBound", "lower_bound", "makespan_lower_bound", "heads_and_tails", "smallest_feasible_cap"]

#: The arguments, simplest first (a tie goes to the simplest).
ARGUMENTS = ("critical path", "work", "in-flight", "memory ramp", "memory area")


@dataclass(frozen=True)
class LowerBound:
    """The best makespan bound, the argument that gave it, and every argument's own value."""

    value: float
    argument: str
    by_argument: dict[str, float]


def lower_bound(problem: Problem) -> LowerBound:
    """Every argument on `problem`; the best one is the bound.

    - critical path: the longest path through the grid of heads and tails
      (`pipesynth.solver.grid`) without the cap: one microbatch's chain, or
      one pass repeated m times in a row;
    - work: per device, the preemptive one-machine bound (`jackson`) on that grid;
    - in-flight: the same two on the grid with the cap's rules;
    - memory ramp, memory area: per device, `pipesynth.solver.memory_bounds`.

    With exact integer costs every makespan is a multiple of the time grid
    (1 / `Scaled.time_scale`: list scheduling only adds costs and comm), so
    each value is rounded up to it.
    """
    plain = grid(problem, inflight=False)
    values = {"critical path": plain.longest_path(problem), "work": max(device_jackson(problem, plain))}
    if problem.cap is not None:
        tight = grid(problem, inflight=True)
        devices = range(problem.devices)
        values["in-flight"] = max(tight.longest_path(problem), *device_jackson(problem, tight))
        values["memory ramp"] = max(memory_ramp(problem, tight, d) for d in devices)
        values["memory area"] = max(memory_area(problem, tight, d) for d in devices)
    scaled = Scaled.of(problem)
    if scaled.exact:
        ts = scaled.time_scale
        values = {k: math.ceil(v * ts - 1e-6) / ts for k, v in values.items()}
    best = max(values.values())
    return LowerBound(best, next(k for k in ARGUMENTS if values.get(k, -1.0) >= best - 1e-9), values)


def makespan_lower_bound(problem: Problem) -> float:
    """The best of `lower_bound`'s arguments: no schedule of the problem is shorter."""
    return lower_bound(problem).value


def device_jackson(problem: Problem, g: Grid) -> list[float]:
    """Per device: `jackson` on its passes with the grid's heads and tails."""
    costs = [problem.cost(*p) for p in g.order]
    jobs: list[list[tuple[float, float, float]]] = [[] for _ in range(problem.devices)]
    for hs, qs in zip(g.heads, g.tails):
        for (_op, s), h, c, q in zip(g.order, hs, costs, qs):
            jobs[problem.placement[s]].append((h, c, q))
    return [jackson(js) for js in jobs]


def jackson(jobs: list[tuple[float, float, float]]) -> float:
    """Least max(end + tail) of (head, length, tail) jobs on one machine with preemption.

    Jackson's preemptive schedule (at every moment run the released job with
    the longest tail) is optimal for this relaxation. A device runs its
    passes one at a time, each no earlier than its head and followed by at
    least its tail, so no schedule of the problem is shorter.
    """
    jobs = sorted(jobs)
    ready: list[tuple[float, float]] = []  # (-tail, left to run)
    t, best, i = 0.0, 0.0, 0
    while i < len(jobs) or ready:
        if not ready:
            t = max(t, jobs[i][0])
        while i < len(jobs) and jobs[i][0] <= t:
            heapq.heappush(ready, (-jobs[i][2], jobs[i][1]))
            i += 1
        neg_tail, left = heapq.heappop(ready)
        run = min(left, jobs[i][0] - t) if i < len(jobs) else left
        t += run
        if left - run > 1e-12:
            heapq.heappush(ready, (neg_tail, left - run))
        else:
            best = max(best, t - neg_tail)
    return best


def smallest_feasible_cap(problem: Problem) -> tuple[float, ...]:
    """Per device, the activation of one microbatch on all its stages.

    Necessary: when the F of a device's last stage runs for some microbatch,
    every earlier stage of that microbatch on the device still holds its whole
    activation (its B waits for that F through the chain of B's). Sufficient:
    running the microbatches one after another, each W right after its B,
    never holds more (`sequential_order`).
    """
    return tuple(problem.device_activation(d) for d in range(problem.devices))


def check_cap(problem: Problem) -> None:
    """Raise InfeasibleError naming the first device whose cap is below the minimum."""
    if problem.cap is None:
        return
    need = smallest_feasible_cap(problem)
    for d, (cap, least) in enumerate(zip(problem.cap, need)):
        if cap < least - 1e-9:
            in_bytes = problem.units is not None and problem.units.bytes
            show = format_bytes if in_bytes else (lambda x: f"{x:g}")
            smallest = show(need[0]) if len(set(need)) == 1 else "[" + ", ".join(show(x) for x in need) + "]"
            fits = show(cap) if in_bytes else f"{cap:g} units"
            uniform = f" (one budget for every device: at least {show(max(need))})" if in_bytes else ""
            raise InfeasibleError(
                f"infeasible: no schedule fits {fits} on device {d}; the smallest feasible cap is {smallest}{uniform}"
            )


def sequential_order(problem: Problem) -> list[list[tuple[Op, int, int]]]:
    """One microbatch at a time through the whole chain: fits the smallest feasible cap."""
    chain = chain_order(problem)
    order: list[list[tuple[Op, int, int]]] = [[] for _ in range(problem.devices)]
    for j in range(problem.microbatches):
        for op, s in chain:
            order[problem.placement[s]].append((op, s, j))
    return order
