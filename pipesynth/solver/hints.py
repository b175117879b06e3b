"""Every known schedule for a problem that fits its cap: the solver's starting points.

Handcrafted generators are tried when their placement is the problem's; a
fused-backward generator also serves a split-backward problem, with each W
run right after its B (same times, no more memory). The sequential schedule
(one microbatch at a time) always fits the smallest feasible cap.
"""

from __future__ import annotations

from pipesynth.construct import GENERATORS
from pipesynth.construct.blocks import Block, repeated_order, unroll
from pipesynth.core.problem import Problem, one_f_one_b_peak, placement_for
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order
from pipesynth.core.validate import find_violations
from pipesynth.solver.background import Job
from pipesynth.solver.bounds import sequential_order


def sequential(problem: Problem) -> Schedule:
    return from_order(problem, sequential_order(problem), "sequential")


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


def applicable(problem: Problem) -> list[str]:
    """Names of the generators that can schedule this problem's placement and backward mode."""
    return [
        g.name
        for g in GENERATORS.values()
        if _same_placement(g.placement, problem) and (problem.split_backward or not g.split_backward)
    ]


def build(name: str, problem: Problem) -> Schedule | None:
    """Generator `name` on the problem, if it succeeds and fits the cap."""
    gen = GENERATORS[name]
    if gen.split_backward == problem.split_backward:
        schedule = gen.build(problem)
    else:
        schedule = _split(gen.build(problem.fused()), problem)
    return schedule if schedule.problem == problem and not find_violations(schedule) else None


def repeated(block: Block, problem: Problem) -> Schedule | None:
    """The block repeated and squeezed (no reorder): quick, for any size."""
    schedule = from_order(problem, repeated_order(block, problem.microbatches), "block", interval=block.interval)
    return None if find_violations(schedule) else schedule


def reordered(block: Block, problem: Problem) -> Schedule | None:
    """The block through the building-block unroll (reorder portfolio under the cap): slower, better."""
    schedule = unroll(block, problem.microbatches, name="block", cap=problem.cap)
    return None if find_violations(schedule) else schedule


#: Generators that adapt to a cap, each with the cap (relative to 1F1B's peak) it reaches without one:
#: about 1/3 for V-Min, 1/2 for V-Half, 1 for V-ZB (docs/design.md section 2).
ADAPTING = {"v-min": 1 / 3, "v-half": 1 / 2, "v-zb": 1.0}


def generator_jobs(problem: Problem) -> list[Job]:
    """Build jobs, the generators that adapt to a cap first, the one made for the problem's cap leading.

    At depth a build takes minutes (D = 64, m = 256: about 100 s each on one
    core), so the one most likely best (the largest natural memory within the
    cap, then the nearest) comes first and may be all that arrives in time.
    """
    level = 1.0 if problem.cap is None else min(c / r for c, r in zip(problem.cap, one_f_one_b_peak(problem)))

    def rank(name: str) -> tuple:
        natural = ADAPTING.get(name)
        if natural is None:
            return (True, 0.0, name)
        return (False, natural - level if natural > level + 1e-9 else level - natural - 1.0, name)

    return [(build, (name, problem)) for name in sorted(applicable(problem), key=rank)]


def handcrafted(problem: Problem) -> list[Schedule]:
    """Every applicable generator's schedule that fits, and the sequential one (in-process, no deadline)."""
    out = [sequential(problem)]
    for fn, args in generator_jobs(problem):
        try:
            schedule = fn(*args)
        except Exception:  # noqa: BLE001 - a generator refusing this problem is not an error here
            continue
        if schedule is not None:
            out.append(schedule)
    return out
