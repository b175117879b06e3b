"""Properties over random problems: generated schedules are valid, bounded and survive the file."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orders import random_valid_order

from pipesynth.construct import GENERATORS, generate, get_generator
from pipesynth.core.problem import make_problem
from pipesynth.core.simulate import from_order, simulate
from pipesynth.core.validate import find_violations
from pipesynth.errors import PipesynthError
from pipesynth.formats import schedule_json

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
costs = st.integers(min_value=0, max_value=6) | st.sampled_from([0.5, 1.25, 2.5])


@st.composite
def options(draw):
    return {
        "devices": draw(st.integers(1, 5)),
        "microbatches": draw(st.integers(1, 9)),
        "chunks": draw(st.integers(1, 3)),
        "cost": {"F": draw(costs), "B": draw(costs), "W": draw(costs)},
        "comm": draw(st.sampled_from([0, 0.5, 1, 3])),
        "activation": draw(st.sampled_from([1, 2, 0.5])),
    }


@pytest.mark.parametrize("name", sorted(GENERATORS))
@SETTINGS
@given(opts=options())
def test_generated_schedules_are_valid_bounded_and_round_trip(name, opts):
    opts = dict(opts)
    devices, microbatches = opts.pop("devices"), opts.pop("microbatches")
    try:
        s = generate(name, devices, microbatches, **opts)
    except PipesynthError as err:
        assert name in str(err)  # a refusal says which generator and why
        return
    gen = get_generator(name)
    assert s.problem.split_backward == gen.split_backward and s.problem.devices == devices
    assert find_violations(s) == []
    assert s.metrics.makespan >= s.problem.work_lower_bound() - 1e-9
    assert simulate(s).makespan == s.metrics.makespan
    assert schedule_json.loads(schedule_json.dumps(s)) == s


@st.composite
def random_valid_orders(draw):
    """A problem and device orders from a random run of ready passes: never deadlocked."""
    devices = draw(st.integers(1, 4))
    placement = draw(st.sampled_from(["linear", "loop", "v"]))
    problem = make_problem(
        devices,
        draw(st.integers(1, 5)),
        placement,
        chunks=2,
        cost={"F": draw(costs), "B": draw(costs), "W": draw(costs)},
        comm=draw(st.sampled_from([0, 1])),
        split_backward=draw(st.booleans()),
    )
    order = random_valid_order(problem, random.Random(draw(st.integers(0, 2**32))))
    return problem, order


@SETTINGS
@given(case=random_valid_orders())
def test_any_order_respecting_dependencies_is_valid_and_bounded(case):
    problem, order = case
    s = from_order(problem, order, "random")
    assert find_violations(s) == []
    assert s.metrics.makespan >= problem.work_lower_bound() - 1e-9
    assert schedule_json.loads(schedule_json.dumps(s)) == s
