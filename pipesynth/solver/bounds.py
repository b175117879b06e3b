"""What no schedule can beat: the makespan lower bound and the smallest feasible cap.

Both are direct arguments, so they hold for every schedule of the problem,
whatever the solver finds.
"""

from __future__ import annotations

from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import PassId, chain_order, comm_delay, dependencies, successors
from pipesynth.core.units import format_bytes
from pipesynth.errors import InfeasibleError


def heads_and_tails(problem: Problem) -> tuple[dict[PassId, float], dict[PassId, float]]:
    """Earliest start of each pass of one microbatch, and the least time left after it ends.

    One sweep each way along the chain order (a topological order of one
    microbatch's passes), so it runs in linear time at any depth.
    """
    order = chain_order(problem)
    head: dict[PassId, float] = {}
    for op, s in order:
        deps = dependencies(problem, op, s, 0)
        head[(op, s)] = max(
            (head[(d, ds)] + problem.cost(d, ds) + comm_delay(problem, ds, s) for d, ds, _ in deps), default=0.0
        )
    tail: dict[PassId, float] = {}
    for op, s in reversed(order):
        after = successors(problem, op, s, 0)
        tail[(op, s)] = max(
            (comm_delay(problem, s, n) + problem.cost(nop, n) + tail[(nop, n)] for nop, n, _ in after), default=0.0
        )
    return head, tail


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
    chain = chain_order(problem)
    order: list[list[tuple[Op, int, int]]] = [[] for _ in range(problem.devices)]
    for j in range(problem.microbatches):
        for op, s in chain:
            order[problem.placement[s]].append((op, s, j))
    return order
