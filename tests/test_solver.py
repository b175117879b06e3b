"""The CP-SAT synthesizer: cap edges, exact block memory, determinism, never worse than its hints."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipesynth.construct.blocks import Block, unroll
from pipesynth.core.problem import make_problem
from pipesynth.core.validate import find_violations
from pipesynth.errors import InfeasibleError
from pipesynth.solver import SolverParams, makespan_lower_bound, smallest_feasible_cap, solve
from pipesynth.solver.block import search_block
from pipesynth.solver.full import polish
from pipesynth.solver.greedy import greedy_block, periodic_peak
from pipesynth.solver.hints import handcrafted
from pipesynth.solver.scaled import Scaled

FAST = {"time_limit": 1.0, "workers": 1, "deterministic": True}


def test_cap_below_the_smallest_feasible_is_refused_with_the_minimum():
    p = make_problem(3, 4, "v", activation=[1, 2, 1, 1, 1, 1])
    assert smallest_feasible_cap(p) == (2.0, 3.0, 2.0)
    with pytest.raises(InfeasibleError, match=r"no schedule fits 2.9 units on device 1; .* is \[2, 3, 2\]"):
        solve(p.with_cap((2.0, 2.9, 2.0)), **FAST)


def test_cap_exactly_at_the_smallest_feasible_is_solved_within_it():
    p = make_problem(3, 4, "v", cost={"F": 1, "B": 2, "W": 1}, activation=[1, 2, 1, 1, 1, 1])
    p = p.with_cap(smallest_feasible_cap(p))
    result = solve(p, **FAST)
    assert find_violations(result.schedule) == []
    assert all(peak <= cap for peak, cap in zip(result.schedule.metrics.peak_memory, p.cap))


def test_tiny_problem_is_proven_optimal():
    result = solve(make_problem(2, 2, "v", cap=2), **FAST)
    assert result.status == "optimal"
    assert result.gap == 0
    assert result.lower_bound == result.makespan


def test_deterministic_mode_repeats_itself():
    p = make_problem(3, 6, "v", cost={"F": 3, "B": 4, "W": 2}, cap=3)
    first, second = solve(p, **FAST), solve(p, **FAST)
    assert first.schedule.actions == second.schedule.actions


def test_block_memory_model_matches_the_simulated_steady_state():
    """The exact periodic memory of a block is what its long unrolled schedule peaks at."""
    p = make_problem(4, 24, "v", cost={"F": 3, "B": 4, "W": 2})
    scaled = Scaled.of(p)
    checked = 0
    for T in range(18, 48, 3):
        offsets = greedy_block(scaled, T)
        if offsets is None:  # greedy placement can fragment the period
            continue
        checked += 1
        block = Block(p, float(T), {k: float(v) for k, v in offsets.items()})
        schedule = unroll(block, p.microbatches)
        assert list(schedule.metrics.peak_memory) == periodic_peak(scaled, T, offsets)
    assert checked >= 5


def test_block_search_respects_the_cap_and_the_work_bound():
    p = make_problem(4, 16, "v", cost={"F": 3, "B": 4, "W": 2}, cap=4)
    found = search_block(p, SolverParams(workers=1, deterministic=True), 3.0)
    assert found.block.interval >= 18  # each device runs 2 x (3 + 4 + 2) per microbatch
    schedule = unroll(found.block, p.microbatches)
    assert find_violations(schedule) == []
    assert max(schedule.metrics.peak_memory) <= 4


def test_polish_never_returns_worse_than_its_hint():
    p = make_problem(3, 6, "v", cost={"F": 2, "B": 3, "W": 1}, cap=4)
    for hint in handcrafted(p):
        result = polish(hint, SolverParams(workers=1, deterministic=True), 0.5, makespan_lower_bound(p))
        assert result.schedule.metrics.makespan <= hint.metrics.makespan
        assert find_violations(result.schedule) == []


problems = st.builds(
    lambda devices, m, placement, f, b, w, comm, split, extra: (
        make_problem(devices, m, placement, cost={"F": f, "B": b, "W": w}, comm=comm, split_backward=split, chunks=2),
        extra,
    ),
    devices=st.integers(1, 3),
    m=st.integers(1, 4),
    placement=st.sampled_from(["linear", "loop", "v"]),
    f=st.integers(1, 4),
    b=st.integers(1, 4),
    w=st.integers(1, 3),
    comm=st.sampled_from([0, 0.5, 1]),
    split=st.booleans(),
    extra=st.integers(0, 3),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems)
def test_solved_schedules_are_valid_within_the_cap_and_never_worse_than_the_hints(case):
    problem, extra = case
    least = smallest_feasible_cap(problem)
    problem = problem.with_cap(tuple(c + extra for c in least))
    result = solve(problem, time_limit=0.5, workers=1, deterministic=True)
    assert find_violations(result.schedule) == []
    assert result.lower_bound <= result.makespan + 1e-9
    assert makespan_lower_bound(problem) <= result.makespan + 1e-9
    assert result.makespan <= min(h.metrics.makespan for h in handcrafted(problem)) + 1e-9


def test_a_stopped_search_still_returns_a_valid_schedule_marked_interrupted():
    params = SolverParams(workers=1)
    params.request_stop()  # what Ctrl-C does in the CLI
    result = solve(make_problem(3, 6, "v", cap=4), time_limit=5.0, params=params)
    assert result.status == "interrupted"
    assert find_violations(result.schedule) == []


def test_uneven_stages_partial_kept_for_w_and_fractional_comm():
    """Embedding-heavy first stage, head-heavy last stage, W keeping half: scaled to integers, still exact."""
    p = make_problem(
        3,
        6,
        "loop",
        chunks=2,
        cost={"F": [2, 1, 1, 1, 1, 3], "B": [2, 1, 1, 1, 1, 3], "W": 1},
        comm=0.5,
        activation=[3, 1, 1, 1, 1, 2],
        kept_for_w=[1.5, 0.5, 0.5, 0.5, 0.5, 1],
    )
    p = p.with_cap(tuple(c + 2 for c in smallest_feasible_cap(p)))
    result = solve(p, **FAST)
    assert find_violations(result.schedule) == []
    assert all(peak <= cap for peak, cap in zip(result.schedule.metrics.peak_memory, p.cap))
    assert result.makespan >= makespan_lower_bound(p)
