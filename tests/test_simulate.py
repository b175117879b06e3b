"""The timing and memory rules of docs/design.md section 2, on hand-checked cases."""

import pytest

from pipesynth.construct import generate
from pipesynth.core.problem import make_problem
from pipesynth.core.schedule import Action, Schedule
from pipesynth.core.simulate import from_order, simulate
from pipesynth.errors import InvalidScheduleError


def test_comm_is_paid_only_between_devices():
    # Stages 0 and 1 on device 0, stage 2 on device 1: only the 1 -> 2 hop and back costs comm.
    p = make_problem(2, 1, [0, 0, 1], cost={"F": 1, "B": 2, "W": 0}, comm=0.5, split_backward=False)
    s = from_order(p, [[("F", 0, 0), ("F", 1, 0), ("B", 1, 0), ("B", 0, 0)], [("F", 2, 0), ("B", 2, 0)]], "t")
    times = {a.key: (a.start, a.end) for a in s.all_actions()}
    assert times[("F", 1, 0)] == (1, 2) and times[("F", 2, 0)] == (2.5, 3.5)
    assert times[("B", 2, 0)] == (3.5, 5.5) and times[("B", 1, 0)] == (6, 8) and times[("B", 0, 0)] == (8, 10)
    assert s.metrics.makespan == 10


def test_device_runs_its_list_in_order_even_when_a_later_pass_is_ready():
    p = make_problem(2, 2, cost={"F": 1, "B": 1, "W": 1})
    # Device 1 insists on F1 before B0: B0 waits although its inputs are ready at t=2.
    s = from_order(
        p,
        [
            [("F", 0, 0), ("F", 0, 1), ("B", 0, 0), ("B", 0, 1), ("W", 0, 0), ("W", 0, 1)],
            [("F", 1, 0), ("F", 1, 1), ("B", 1, 0), ("W", 1, 0), ("B", 1, 1), ("W", 1, 1)],
        ],
        "t",
    )
    assert [(a.op, a.mb, a.start) for a in s.actions[1][:3]] == [("F", 0, 1), ("F", 1, 2), ("B", 0, 3)]


def test_memory_walk_releases_after_b_and_w():
    p = make_problem(1, 2, activation=4, kept_for_w=1)
    order = [[("F", 0, 0), ("F", 0, 1), ("B", 0, 0), ("B", 0, 1), ("W", 0, 0), ("W", 0, 1)]]
    sim = simulate(from_order(p, order, "t"))
    assert sim.memory == [[4, 8, 5, 2, 1, 0]] and sim.peak_memory == (8,)
    fused = make_problem(1, 2, activation=4, kept_for_w=1, split_backward=False)
    fused_sim = simulate(from_order(fused, [[("F", 0, 0), ("F", 0, 1), ("B", 0, 0), ("B", 0, 1)]], "t"))
    assert fused_sim.memory == [[4, 8, 4, 0]]


def test_bubble_rate_and_busy_follow_the_definitions():
    sim = simulate(generate("gpipe", 3, 2, cost={"F": 1, "B": 1, "W": 1}))
    assert sim.busy == [6, 6, 6]
    assert sim.makespan == (2 + 3 - 1) * (1 + 2)  # (m + D - 1)(F + fused B)
    assert sim.bubble_rate == pytest.approx(1 - 18 / (3 * sim.makespan))


def test_simulate_refuses_a_pass_whose_input_never_runs():
    p = make_problem(2, 1, split_backward=False)
    s = Schedule(p, [[Action("F", 0, 0), Action("B", 0, 0)], [Action("B", 1, 0)]])
    with pytest.raises(InvalidScheduleError, match="B of stage 1 microbatch 0 needs F of stage 1 microbatch 0"):
        simulate(s)


def test_simulate_refuses_a_deadlock():
    p = make_problem(1, 1, split_backward=False)
    s = Schedule(p, [[Action("B", 0, 0), Action("F", 0, 0)]])
    with pytest.raises(InvalidScheduleError, match="deadlock"):
        simulate(s)


def test_fifty_thousand_actions_simulate_to_the_closed_form():
    s = generate("1f1b", 8, 3125)  # 8 x 3125 x (F + B) = 50,000 passes
    assert s.num_actions == 50_000
    assert s.metrics.bubble_rate == pytest.approx(7 / (3125 + 7), abs=1e-6)
