"""A plan for a measured problem: the solver's best schedule under a memory budget, checked against the rest.

`plan_problem(problem, memory="12GiB")` sets the budget (bytes for a
profiled problem, or `0.5x` of 1F1B's peak), refuses a budget no schedule
can meet (naming the smallest that works), runs the CP-SAT solver, and
records in the schedule's provenance the makespan of every handcrafted
schedule that fits the same budget, so a launcher can see what the plan is
worth. The solver never returns anything slower than the best of those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pipesynth.core.problem import Number, Problem, parse_cap
from pipesynth.core.schedule import Schedule
from pipesynth.solver import solve
from pipesynth.solver.bounds import check_cap
from pipesynth.solver.hints import handcrafted
from pipesynth.solver.progress import Progress


def plan_problem(
    problem: Problem,
    memory: str | Number | Sequence[Number] | None = None,
    *,
    time_limit: float = 20.0,
    workers: int = 2,
    deterministic: bool = False,
    progress: Progress | None = None,
) -> Schedule:
    """The fastest schedule found within `time_limit` s whose peak fits `memory` on every device.

    memory: None keeps the problem's cap; otherwise as `parse_cap` reads it
    ("12GiB", "8GiB:8GiB", 3e9, "0.5x"). Raises InfeasibleError with the
    smallest feasible budget when it is too small for any schedule.
    """
    if memory is not None:
        problem = problem.with_cap(parse_cap(memory, problem))
    check_cap(problem)
    result = solve(problem, time_limit, workers=workers, deterministic=deterministic, progress=progress)
    rivals = {s.name: s.metrics.makespan for s in handcrafted(problem)}
    return replace(result.schedule, provenance={**result.schedule.provenance, "handcrafted_makespan": rivals})
