"""Window search (solver/lns.py): never worse, never invalid, stops when told, and improves a poor start."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipesynth.core.problem import make_problem
from pipesynth.core.validate import find_violations
from pipesynth.solver import SolverParams
from pipesynth.solver.hints import sequential
from pipesynth.solver.lns import improve


def deterministic() -> SolverParams:
    return SolverParams(workers=1, deterministic=True)


def test_a_sequential_start_gets_much_shorter_and_stays_valid_under_its_cap():
    problem = make_problem(3, 6, "v", cost={"F": 3, "B": 4, "W": 2}, comm=1, cap=3)
    start = sequential(problem)
    result = improve(start, deterministic(), 5.0, window_passes=30)
    assert result.improved and result.accepted > 0
    assert result.schedule.metrics.makespan < 0.8 * start.metrics.makespan
    assert find_violations(result.schedule) == []
    assert max(result.schedule.metrics.peak_memory) <= 3


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    devices=st.integers(2, 3),
    microbatches=st.integers(1, 5),
    costs=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
    comm=st.integers(0, 2),
    cap_extra=st.integers(0, 3),
    window=st.integers(4, 40),
)
def test_the_result_is_never_worse_nor_invalid(devices, microbatches, costs, comm, cap_extra, window):
    problem = make_problem(devices, microbatches, "v", cost=dict(zip("FBW", costs)), comm=comm, cap=2 + cap_extra)
    start = sequential(problem)
    result = improve(start, deterministic(), 0.5, window_passes=window)
    assert find_violations(result.schedule) == []
    assert result.schedule.metrics.makespan <= start.metrics.makespan
    assert all(peak <= cap for peak, cap in zip(result.schedule.metrics.peak_memory, problem.cap))
    assert result.improved == (result.schedule.metrics.makespan < start.metrics.makespan)


def test_a_set_stop_event_returns_the_start_without_searching():
    start = sequential(make_problem(3, 6, "v", cap=3))
    params = deterministic()
    params.request_stop()
    result = improve(start, params, 5.0)
    assert result.schedule is start and result.windows == 0


def test_the_budget_bounds_the_windows_solved():
    start = sequential(make_problem(4, 8, "v", cost={"F": 3, "B": 4, "W": 2}, cap=4))
    short = improve(start, deterministic(), 0.3, window_passes=20)
    longer = improve(start, deterministic(), 3.0, window_passes=20)
    assert short.windows < longer.windows


def test_a_start_at_the_lower_bound_is_returned_at_once():
    start = sequential(make_problem(3, 6, "v", cap=3))
    result = improve(start, deterministic(), 5.0, lower_bound=start.metrics.makespan)
    assert result.schedule is start and result.windows == 0


def test_deterministic_mode_gives_the_same_schedule_twice():
    problem = make_problem(3, 6, "v", cost={"F": 3, "B": 4, "W": 2}, comm=1, cap=3)
    start = sequential(problem)
    runs = [improve(start, deterministic(), 2.0, window_passes=20) for _ in range(2)]
    orders = [[[a.key for a in dev] for dev in r.schedule.actions] for r in runs]
    assert orders[0] == orders[1] and runs[0].windows == runs[1].windows
