"""The makespan lower bound: never above any valid schedule, and as strong as the theory says."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from orders import random_valid_order
from problems import at_peak, problems, tiny_optimum

from pipesynth.construct import GENERATORS
from pipesynth.core.problem import make_problem
from pipesynth.core.simulate import from_order
from pipesynth.core.validate import find_violations
from pipesynth.solver import solve
from pipesynth.solver.bounds import ARGUMENTS, lower_bound, smallest_feasible_cap
from pipesynth.solver.hints import build, handcrafted
from pipesynth.solver.one_device import ARGUMENT as ONE_DEVICE

FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FEW
@given(problems())
def test_bound_never_exceeds_a_handcrafted_schedule_at_its_own_peak(problem):
    for schedule in handcrafted(problem):
        capped = at_peak(schedule)
        bound = lower_bound(capped)
        assert bound.value <= schedule.metrics.makespan + 1e-9, (schedule.name, bound)


@FEW
@given(problems(), st.integers(0, 2**32), st.booleans())
def test_bound_never_exceeds_a_random_order_at_its_own_peak(problem, seed, frugal):
    """Orders that break FIFO and run B/W as early as they can, so the cap is tight."""
    schedule = from_order(problem, random_valid_order(problem, random.Random(seed), frugal), "random")
    bound = lower_bound(at_peak(schedule))
    assert bound.value <= schedule.metrics.makespan + 1e-9, bound


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(devices=3, microbatches=4, least_cost=1), st.lists(st.integers(0, 3), min_size=3, max_size=3))
def test_bound_never_exceeds_the_proven_optimum_of_a_tiny_problem(problem, extra):
    best = tiny_optimum(problem, extra)
    assume(best is not None)
    problem = best.problem
    assert find_violations(best) == []
    assert lower_bound(problem).value <= best.metrics.makespan + 1e-9


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(devices=3, microbatches=6), st.integers(0, 2))
def test_bound_never_exceeds_the_solvers_result_and_is_reported(problem, extra):
    problem = problem.with_cap(tuple(c + extra for c in smallest_feasible_cap(problem)))
    result = solve(problem, time_limit=0.5, workers=1, deterministic=True)
    assert lower_bound(problem).value <= result.makespan + 1e-9
    prov = result.schedule.provenance
    assert prov["lower_bound"] == result.lower_bound <= result.makespan + 1e-9
    assert prov["bound_argument"] in (*ARGUMENTS, ONE_DEVICE, "cp-sat")
    assert prov["gap"] == pytest.approx((result.makespan - result.lower_bound) / result.makespan, abs=1e-6)
    if result.status == "optimal":
        assert result.lower_bound == result.makespan


@pytest.mark.parametrize(("devices", "cap", "generator"), [(4, 4, "v-min"), (8, 10, "v-half"), (16, 18, "v-half")])
def test_v_schedules_at_equal_costs_meet_the_papers_bound_so_are_optimal(devices, cap, generator):
    """6m + 6D - 3k - 1 (docs/design.md section 2): the memory ramp proves it for every schedule."""
    m = 2 * devices
    problem = make_problem(devices, m, "v", cap=cap)
    bound = lower_bound(problem)
    assert bound.value == 6 * m + 6 * devices - 3 * cap - 1
    assert bound.argument == "memory ramp"
    assert build(generator, problem).metrics.makespan == bound.value


def test_smallest_cap_keeps_one_microbatch_per_device_in_flight():
    """D=2, cap 2 chunks: 8 time units per microbatch (proven optimal by CP-SAT alone in about 10 s)."""
    problem = make_problem(2, 16, "v", cap=2)
    bound = lower_bound(problem)
    assert bound.value == 129
    assert bound.argument == "in-flight"
    assert lower_bound(problem.with_cap(None)).value == 97  # the work bound alone


def test_every_argument_is_reported_and_the_best_is_the_bound():
    problem = make_problem(4, 8, "v", cost={"F": 3, "B": 4, "W": 2}, comm=1, cap=5)
    bound = lower_bound(problem)
    assert set(bound.by_argument) == set(ARGUMENTS)
    assert bound.value == max(bound.by_argument.values()) == bound.by_argument[bound.argument]
    assert set(lower_bound(problem.with_cap(None)).by_argument) == {"critical path", "work"}


def test_a_256_stage_pipeline_is_bounded_without_recursion():
    problem = make_problem(128, 8, "v", cap=128)
    assert lower_bound(problem).value >= 2 * 256 + 1  # one microbatch's F's and B's through 256 stages, then W


@pytest.mark.parametrize("name", ["v-min", "v-half", "zb-v", "1f1b", "zb-h2"])
def test_unequal_costs_and_comm_never_push_the_bound_past_a_generator(name):
    gen = GENERATORS[name]
    problem = make_problem(
        6,
        12,
        gen.placement,
        chunks=2,
        cost={"F": [3, 2, 4, 3, 2, 5, 3, 2, 4, 3, 2, 5][: 6 if gen.placement == "linear" else 12], "B": 4, "W": 2},
        comm=1,
        activation=2,
        kept_for_w=1,
        split_backward=gen.split_backward,
    )
    schedule = gen.build(problem)
    assert lower_bound(at_peak(schedule)).value <= schedule.metrics.makespan + 1e-9
