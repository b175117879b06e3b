"""Every known schedule for a problem that fits its cap: the solver's starting points.

Handcrafted generators are tried when their placement is the problem's; a
fused-backward generator also serves a split-backward problem, with each W
run right after its B (same times, no more memory). The sequential schedule
(one microbatch at a time) always fits the smallest feasible cap.
"""

from __future__ import annotations

from pipesynth.generators import GENERATORS
from pipesynth.problem import Problem, placement_for
from pipesynth.schedule import Schedule, from_order
from pipesynth.solver.bounds import sequential_order
from pipesynth.validate import find_violations


def _same_placement(kind: str, problem: Problem) -> bool:
    chunks = max(1, problem.stages // problem.devices)
    try:
        return placement_for(kind, problem.devices, chunks) == problem.placement
    except Exception:  # noqa: BLE001 - a generator's placement that cannot apply here
        return False


def _split(fused: Schedule, problem: Problem) -> Schedule:
    """A fused-backward schedule run on the split problem: W right after its B."""
    order = []
    for dev in fused.actions:
        keys = []
        for a in dev:
            keys.append(a.key)
            if a.op == "B":
                keys.append(("W", a.stage, a.mb))
        order.append(keys)
    return from_order(problem, order, fused.name, **fused.provenance)


def handcrafted(problem: Problem) -> list[Schedule]:
    """Schedules of every registered generator that applies to the problem and fits its cap."""
    out = [from_order(problem, sequential_order(problem), "sequential")]
    for gen in GENERATORS.values():
        if not _same_placement(gen.placement, problem):
            continue
        if gen.split_backward and not problem.split_backward:
            continue
        try:
            if gen.split_backward == problem.split_backward:
                schedule = gen.build(problem)
            else:
                schedule = _split(gen.build(problem.fused()), problem)
        except Exception:  # noqa: BLE001 - a generator refusing this problem is not an error here
            continue
        if schedule.problem == problem and not find_violations(schedule):
            out.append(schedule)
    return out
