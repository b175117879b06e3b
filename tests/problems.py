"""Random problems for property tests of bounds: any placement, backward mode, costs, memory and comm."""

from __future__ import annotations

from exact import optimal_schedule
from hypothesis import strategies as st

from pipesynth.core.problem import make_problem
from pipesynth.solver.bounds import smallest_feasible_cap


@st.composite
def problems(draw, devices=4, microbatches=8, least_cost=0):
    """Any placement and backward mode; costs, activations and kept_for_w per stage or not; comm."""
    d = draw(st.integers(1, devices))
    placement = draw(st.sampled_from(["linear", "loop", "v"]))
    stages = d if placement == "linear" else 2 * d

    def per_stage(lo, hi):
        one = st.integers(lo, hi)
        return draw(one | st.lists(one, min_size=stages, max_size=stages))

    activation = per_stage(1, 3)
    acts = activation if isinstance(activation, list) else [activation] * stages
    kept = draw(st.none() | st.tuples(*(st.integers(0, a) for a in acts)).map(list))
    return make_problem(
        d,
        draw(st.integers(1, microbatches)),
        placement,
        chunks=2,
        cost={
            "F": per_stage(max(1, least_cost), 4),
            "B": per_stage(max(1, least_cost), 5),
            "W": per_stage(least_cost, 3),
        },
        comm=draw(st.sampled_from([0, 0, 1, 2])),
        activation=activation,
        kept_for_w=kept,
        split_backward=draw(st.booleans()),
    )


def at_peak(schedule):
    """The schedule's problem with its own peak as the cap: the tightest cap it fits."""
    p = schedule.problem
    return p.with_cap(
        tuple(max(peak, least) for peak, least in zip(schedule.metrics.peak_memory, smallest_feasible_cap(p)))
    )


def tiny_optimum(problem, extra):
    """The proven optimal schedule of `problem` capped at each device's least feasible cap plus `extra[d % 3]`."""
    least = smallest_feasible_cap(problem)
    return optimal_schedule(problem.with_cap(tuple(c + extra[d % 3] for d, c in enumerate(least))))
