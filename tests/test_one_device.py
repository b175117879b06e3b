"""The one-device bound: never above any valid schedule, and stronger where a device cannot fill its time."""

from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from orders import random_valid_order
from problems import at_peak, problems, tiny_optimum

from pipesynth.core.problem import make_problem
from pipesynth.core.simulate import from_order
from pipesynth.solver import solve
from pipesynth.solver.bounds import lower_bound
from pipesynth.solver.hints import handcrafted
from pipesynth.solver.one_device import ARGUMENT, device_lags, device_model_bound, one_device_bound
from pipesynth.solver.progress import SolverParams

FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = SolverParams(workers=1, deterministic=True)


def every_device_bound(problem):
    return [device_model_bound(problem, d, QUICK, 2.0) for d in range(problem.devices)]


@FEW
@given(problems(devices=3, microbatches=5))
def test_never_exceeds_a_handcrafted_schedule_at_its_own_peak(problem):
    for schedule in handcrafted(problem):
        capped = at_peak(schedule)
        for bound in every_device_bound(capped):
            assert bound is None or bound <= schedule.metrics.makespan + 1e-9, schedule.name


@FEW
@given(problems(devices=3, microbatches=5), st.integers(0, 2**32), st.booleans())
def test_never_exceeds_a_random_order_at_its_own_peak(problem, seed, frugal):
    """Orders that break FIFO and run B/W as early as they can, so the cap is tight."""
    schedule = from_order(problem, random_valid_order(problem, random.Random(seed), frugal), "random")
    for bound in every_device_bound(at_peak(schedule)):
        assert bound is None or bound <= schedule.metrics.makespan + 1e-9


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(devices=3, microbatches=4, least_cost=1), st.lists(st.integers(0, 3), min_size=3, max_size=3))
def test_never_exceeds_the_proven_optimum_of_a_tiny_problem(problem, extra):
    best = tiny_optimum(problem, extra)
    assume(best is not None)
    problem = best.problem
    for bound in every_device_bound(problem):
        assert bound is None or bound <= best.metrics.makespan + 1e-9


def test_lags_are_the_chain_of_passes_between_a_devices_own():
    """V on 2 devices: device 0 holds stages 0 and 3; between F0 and F3 run F1 and F2 on device 1."""
    problem = make_problem(2, 4, "v", cost={"F": [1, 2, 3, 4], "B": 5, "W": 1}, comm=1)
    lags = device_lags(problem, 0)
    assert lags[(("F", 0), ("F", 3))] == 1 + 2 + 3 + 1  # comm, F1, F2 (same device), comm
    assert lags[(("F", 3), ("B", 3))] == 0
    assert lags[(("B", 3), ("B", 0))] == 1 + 5 + 5 + 1  # comm, B2, B1, comm
    assert lags[(("F", 0), ("W", 0))] == 1 + 2 + 3 + 1 + 4 + 5 + 1 + 5 + 5 + 1 + 5
    assert (("B", 0), ("F", 3)) not in lags


def test_beats_the_other_arguments_where_few_microbatches_fit_in_flight():
    """D=4, cap 4 chunk units (the V-Min level), F,B,W = 3,4,2: the last device idles between its passes."""
    problem = make_problem(4, 8, "v", cost={"F": 3, "B": 4, "W": 2}, cap=4)
    others = lower_bound(problem).value
    ours = device_model_bound(problem, 3, SolverParams(workers=2), 20.0)
    assert ours == 193 > others == 187
    found = one_device_bound(problem, SolverParams(workers=2), 20.0)
    assert found is not None and found.device == 3 and found.value == 193


def test_solve_reports_it_as_the_bound():
    problem = make_problem(4, 8, "v", cost={"F": 3, "B": 4, "W": 2}, cap=4)
    result = solve(problem, time_limit=20.0)
    assert result.lower_bound >= 193 <= result.makespan
    assert result.bound_argument in (ARGUMENT, "cp-sat")
    assert result.schedule.provenance["bound_argument"] == result.bound_argument


@pytest.mark.parametrize("cap", [None, 6])
def test_is_not_run_where_it_cannot_help(cap):
    """No cap, or a cap where the probe on a few microbatches beats nothing: no time spent."""
    problem = make_problem(4, 16, "v", cost={"F": 3, "B": 4, "W": 2}, cap=cap)
    assert one_device_bound(problem, SolverParams(workers=2), 10.0) is None


def test_two_devices_run_side_by_side_and_the_stronger_counts():
    """1852,1809,934 with comm 60: the last two devices both beat the other arguments on 8 microbatches."""
    problem = make_problem(4, 8, "v", cost={"F": 1852, "B": 1809, "W": 934}, comm=60, cap=4)
    alone = {d: device_model_bound(problem, d, SolverParams(workers=1), 20.0) for d in (2, 3)}
    found = one_device_bound(problem, SolverParams(workers=2), 20.0)
    assert found is not None and found.value == max(alone.values()) > lower_bound(problem).value


def test_a_stop_ends_both_searches_at_once():
    problem = make_problem(4, 16, "v", cost={"F": 1852, "B": 1809, "W": 934}, comm=60, cap=4)
    params = SolverParams(workers=2)
    threading.Timer(2.0, params.request_stop).start()
    started = time.monotonic()
    one_device_bound(problem, params, 60.0)
    assert time.monotonic() - started < 10.0
