"""What no schedule can beat: the makespan lower bound and the smallest feasible cap.

Both are direct arguments, so they hold for every schedule of the problem,
whatever the solver finds.
"""

from __future__ import annotations

from functools import cache

from pipesynth.core.problem import Op, Problem
from pipesynth.core.simulate import dependencies
from pipesynth.core.units import format_bytes
from pipesynth.errors import InfeasibleError


def _delay(problem: Problem, a: int, b: int) -> float:
    return 0.0 if problem.placement[a] == problem.placement[b] else problem.comm


def heads_and_tails(problem: Problem) -> tuple[dict[tuple[Op, int], float], dict[tuple[Op, int], float]]:
    """Earliest start of each pass of one microbatch, and the least time left after it ends."""
    passes = [(op, s) for s in range(problem.stages) for op in problem.ops]
    successors: dict[tuple[Op, int], list[tuple[Op, int]]] = {p: [] for p in passes}
    for op, s in passes:
        for dop, ds, _ in dependencies(problem, op, s, 0):
            successors[(dop, ds)].append((op, s))

    @cache
    def head(op: Op, s: int) -> float:
        deps = dependencies(problem, op, s, 0)
        return max((head(dop, ds) + problem.cost(dop, ds) + _delay(problem, ds, s) for dop, ds, _ in deps), default=0.0)

    @cache
    def tail(op: Op, s: int) -> float:
        return max(
            (_delay(problem, s, ns) + problem.cost(nop, ns) + tail(nop, ns) for nop, ns in successors[(op, s)]),
            default=0.0,
        )

    return {p: head(*p) for p in passes}, {p: tail(*p) for p in passes}


def makespan_lower_bound(problem: Problem) -> float:
    """Per device: nothing runs before its earliest pass can, all its work, then the least tail.

    Also the critical path of one microbatch. Memory is ignored, so at low caps
    this bound is loose; the solver's own bound can only raise it.
    """
    heads, tails = heads_and_tails(problem)
    best = max(heads[p] + problem.cost(*p) + tails[p] for p in heads)
    for d in range(problem.devices):
        mine = [(op, s) for s in problem.stages_on(d) for op in problem.ops]
        work = problem.microbatches * sum(problem.cost(*p) for p in mine)
        best = max(best, min(heads[p] for p in mine) + work + min(tails[p] for p in mine))
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
    chain: list[tuple[Op, int]] = [("F", s) for s in range(problem.stages)]
    for s in reversed(range(problem.stages)):
        chain.append(("B", s))
        if problem.split_backward:
            chain.append(("W", s))
    order: list[list[tuple[Op, int, int]]] = [[] for _ in range(problem.devices)]
    for j in range(problem.microbatches):
        for op, s in chain:
            order[problem.placement[s]].append((op, s, j))
    return order
