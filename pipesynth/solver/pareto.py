"""The solver's points for `pipesynth pareto --solve`: best makespan at a sweep of caps.

Same model as the handcrafted points (pipesynth.pareto): V placement, each
stage half of a device's share of costs and activation, so peaks compare
with 1F1B's on the same model.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipesynth.errors import InfeasibleError
from pipesynth.pareto import ParetoPoint, point_of
from pipesynth.problem import make_problem, parse_cap
from pipesynth.solver import solve

SWEEP = (0.3, 0.4, 0.5, 0.6, 0.75, 1.0)


def solver_points(
    devices: int,
    microbatches: int,
    cost: dict[str, float] | None = None,
    comm: float = 0.0,
    caps: Sequence[float] = SWEEP,
    time_limit: float = 10.0,
    workers: int = 2,
) -> tuple[list[ParetoPoint], list[str]]:
    """One point per relative cap (`solve@0.5x`), and a note for each cap below the smallest feasible."""
    cost = {"F": 1.0, "B": 1.0, "W": 1.0, **(cost or {})}
    half = {op: c / 2 for op, c in cost.items()}
    problem = make_problem(devices, microbatches, "v", cost=half, comm=comm, activation=0.5)
    points, skipped = [], []
    for factor in caps:
        capped = problem.with_cap(parse_cap(f"{factor}x", problem))
        try:
            result = solve(capped, time_limit=time_limit, workers=workers)
        except InfeasibleError as err:
            skipped.append(f"solve@{factor:g}x: {err}")
            continue
        points.append(point_of(result.schedule, name=f"solve@{factor:g}x"))
    return points, skipped
