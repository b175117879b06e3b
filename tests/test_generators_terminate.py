"""Every generator ends on any small problem, with a valid schedule or a PipesynthError.

Termination is checked by a step budget, not a clock: every builder asks the
rules (pipesynth.core.rules) what a pass waits for, what a message costs and
what a pass frees at each step, so the test counts those questions and stops
a builder that asks more than STEP_BUDGET of them (about 40 times the most
any generator asks on these sizes).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipesynth.core.rules as rules
from pipesynth.construct import GENERATORS
from pipesynth.core.problem import Problem, make_problem
from pipesynth.core.validate import find_violations
from pipesynth.errors import PipesynthError
from pipesynth.solver.bounds import smallest_feasible_cap

STEP_BUDGET = 1_000_000
COUNTED = ("dependencies", "comm_delay", "memory_delta")
#: Generators that build to the problem's cap; the others have a fixed shape and leave the cap to
#: their caller (`pipesynth schedule` and the solver's starts check it).
CAP_ADAPTING = {"v-min", "v-half", "v-zb", "zb-v"}


class OverBudget(Exception):
    """A builder asked the rules more than STEP_BUDGET questions: it is not going to end."""


@pytest.fixture
def step_budget(monkeypatch):
    """Count every question to the rules, in every pipesynth module that imported one, and cap them."""
    asked = [0]
    originals = {name: getattr(rules, name) for name in COUNTED}

    def counted(original):
        def ask(*args):
            asked[0] += 1
            if asked[0] > STEP_BUDGET:
                raise OverBudget(f"more than {STEP_BUDGET} rule look-ups")
            return original(*args)

        return ask

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("pipesynth"):
            for name, original in originals.items():
                if getattr(module, name, None) is original:
                    monkeypatch.setattr(module, name, counted(original))
    return asked


@st.composite
def problems(draw, generator: str) -> Problem:
    """A problem of the generator's placement and backward mode: D <= 4, m <= 8, costs and activations
    per stage, comm, and a cap per device at or above the smallest feasible one."""
    gen = GENERATORS[generator]
    d = draw(st.integers(1, 4))
    stages = d if gen.placement == "linear" else 2 * d

    def per_stage(lo, hi):
        return draw(st.lists(st.integers(lo, hi), min_size=stages, max_size=stages))

    problem = make_problem(
        d,
        draw(st.integers(1, 8)),
        gen.placement,
        chunks=2,
        cost={"F": per_stage(1, 4), "B": per_stage(1, 5), "W": per_stage(0, 3)},
        comm=draw(st.sampled_from([0, 1, 2])),
        activation=per_stage(1, 3),
        split_backward=gen.split_backward,
    )
    spare = draw(st.lists(st.integers(0, 8), min_size=d, max_size=d))
    return problem.with_cap(tuple(c + extra for c, extra in zip(smallest_feasible_cap(problem), spare)))


def check_ends_well(name: str, problem: Problem) -> None:
    """The generator returns a schedule valid for the problem (its cap too, if it adapts to caps) or refuses."""
    try:
        schedule = GENERATORS[name].build(problem)
    except PipesynthError:
        return
    assert schedule.problem == problem
    uncapped = replace(schedule, problem=problem.with_cap(None))
    assert find_violations(uncapped) == [], name
    if name in CAP_ADAPTING:
        assert find_violations(schedule) == [], name


@pytest.mark.parametrize("name", sorted(GENERATORS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_generator_ends_with_a_valid_schedule_or_a_refusal(name, data, step_budget):
    problem = data.draw(problems(name))
    step_budget[0] = 0
    check_ends_well(name, problem)


def test_zb_v_warm_up_ends_when_a_device_above_has_no_room(step_budget):
    """Device 0 (activation 2, cap 4) is full after two forwards while device 1 (activation 1, cap 9)
    still has room: the warm-up step for device 1 used to repeat for ever."""
    problem = make_problem(3, 4, "v", cost={"F": [3, 2, 3, 2, 1, 2]}, activation=[2, 1, 3, 1, 2, 1], cap=[4, 9, 4])
    check_ends_well("zb-v", problem)
