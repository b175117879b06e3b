"""A catalogue of broken schedules and files, each rejected with its own message."""

import copy
import json

import pytest

from pipesynth.construct import generate
from pipesynth.core.schedule import Action, Schedule
from pipesynth.core.validate import find_violations, validate
from pipesynth.errors import InvalidScheduleError, ScheduleFormatError
from pipesynth.formats import schedule_json


def zb_h1():
    """ZB-H1 on 2 devices, 3 microbatches: device 0 runs F0 F1 B0 W0 F2 B1 W1 B2 W2."""
    return generate("zb-h1", 2, 3)


def with_orders(schedule, orders):
    """The same problem with other device orders given as (op, stage, mb) tuples."""
    return Schedule(schedule.problem, [[Action(*key) for key in dev] for dev in orders], name=schedule.name)


def orders_of(schedule):
    return [[a.key for a in dev] for dev in schedule.actions]


def test_the_unbroken_schedule_is_valid():
    assert find_violations(zb_h1()) == []


def test_missing_pass_is_named_with_its_device():
    orders = orders_of(zb_h1())
    orders[1].remove(("W", 1, 2))
    assert find_violations(with_orders(zb_h1(), orders)) == [
        "missing: W of stage 1 microbatch 2 (device 1) is never run"
    ]


def test_duplicated_pass_points_at_both_copies():
    orders = orders_of(zb_h1())
    orders[0].append(("F", 0, 1))
    assert find_violations(with_orders(zb_h1(), orders)) == [
        "actions[0][9]: F of stage 0 microbatch 1 appears twice (first at actions[0][1])"
    ]


def test_misplaced_pass_names_its_device_and_the_stages_device():
    orders = orders_of(zb_h1())
    orders[0].remove(("W", 0, 2))
    orders[1].append(("W", 0, 2))
    assert find_violations(with_orders(zb_h1(), orders)) == [
        "actions[1][9]: W of stage 0 microbatch 2 runs on device 1 but stage 0 is placed on device 0"
    ]


def test_reversed_dependency_on_one_device_is_a_deadlock_cycle():
    orders = orders_of(zb_h1())
    i, j = orders[0].index(("B", 0, 0)), orders[0].index(("W", 0, 0))
    orders[0][i], orders[0][j] = orders[0][j], orders[0][i]  # W0 before B0
    (message,) = find_violations(with_orders(zb_h1(), orders))
    assert message.startswith("deadlock: ")
    assert "W of stage 0 microbatch 0 at actions[0][2]" in message
    assert "B of stage 0 microbatch 0 at actions[0][3]" in message


def test_cross_device_deadlock_reports_the_whole_cycle():
    s = generate("1f1b", 2, 2)
    # Device 0 waits for B0 before sending F1; device 1 waits for F1 before running B0.
    orders = [
        [("F", 0, 0), ("B", 0, 0), ("F", 0, 1), ("B", 0, 1)],
        [("F", 1, 0), ("F", 1, 1), ("B", 1, 0), ("B", 1, 1)],
    ]
    (message,) = find_violations(with_orders(s, orders))
    cycle = message.removeprefix("deadlock: ").split(" -> ")
    assert cycle[-1] == cycle[0].split(" at ")[0]  # back where it started
    assert {c.split(" at ")[0] for c in cycle[:-1]} == {
        "B of stage 0 microbatch 0",
        "F of stage 0 microbatch 1",
        "F of stage 1 microbatch 1",
        "B of stage 1 microbatch 0",
    }
    with pytest.raises(InvalidScheduleError, match="deadlock"):
        validate(with_orders(s, orders))


def test_over_the_cap_names_device_position_level_and_cap():
    s = generate("zb-h1", 3, 6, cap=[3, 2, 3])
    assert find_violations(s) == [
        "actions[1][3]: memory on device 1 reaches 3 after F of stage 1 microbatch 2, over its cap 2"
    ]


def test_a_pass_the_problem_does_not_have_is_rejected():
    s = generate("1f1b", 2, 1)
    orders = orders_of(s)
    orders[0].append(("W", 0, 0))
    assert find_violations(with_orders(s, orders)) == ["actions[0][2]: W is not a pass of this problem (F, B)"]


def valid_dict():
    return json.loads(schedule_json.dumps(zb_h1()))


def broken(edit):
    data = copy.deepcopy(valid_dict())
    edit(data)
    return json.dumps(data)


def set_in(path, value):
    def edit(data):
        obj = data
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    "edit,message",
    [
        (set_in(["format"], "pipesynth.schedule/2"), "format: unsupported version 'pipesynth.schedule/2'"),
        (lambda d: d.pop("format"), "format: missing"),
        (set_in(["problem", "devices"], "2"), "problem.devices: expected an integer, got '2'"),
        (set_in(["problem", "microbatches"], True), "problem.microbatches: expected an integer, got True"),
        (set_in(["problem", "placement", 1], 1.0), "problem.placement[1]: expected an integer device, got 1.0"),
        (set_in(["problem", "cost", "F"], [1, -1]), "problem.cost.F[1]: must be non-negative, got -1"),
        (set_in(["problem", "cost", "W"], -2), "problem.cost.W[0]: must be non-negative, got -2"),
        (set_in(["problem", "cost", "B"], [1, 1, 1]), "problem.cost.B: expected 2 values (one per stage), got 3"),
        (set_in(["problem", "cost", "X"], 1), "problem.cost.X: unknown pass; expected F, B or W"),
        (set_in(["problem", "comm"], -0.5), "problem.comm: must be non-negative, got -0.5"),
        (set_in(["problem", "memory", "kept_for_w"], 2), "problem.memory.kept_for_w[0]: 2 exceeds the activation 1"),
        (set_in(["problem", "memory", "cap"], [4]), "problem.memory.cap: expected 2 values (one per device), got 1"),
        (set_in(["problem", "placement"], [0, 2]), "problem.placement[1]: device 2 is out of range 0..1"),
        (set_in(["actions"], [[]]), "actions: expected one list per device (2), got 1"),
        (set_in(["actions", 0, 0, "op"], "X"), "actions[0][0].op: expected one of F, B, W, got 'X'"),
        (set_in(["actions", 0, 0, "mb"], 1.5), "actions[0][0].mb: expected an integer, got 1.5"),
        (set_in(["actions", 1, 2, "stage"], 7), "actions[1][2].stage: 7 is out of range 0..1"),
        (lambda d: d["actions"][0][3].pop("mb"), "actions[0][3].mb: missing"),
        (set_in(["actions", 0, 1], "F1"), "actions[0][1]: expected an object"),
        (set_in(["metrics", "peak_memory"], ["a", 2]), "metrics.peak_memory[0]: expected a number, got 'a'"),
    ],
)
def test_broken_file_is_rejected_naming_the_field(edit, message):
    with pytest.raises(ScheduleFormatError) as err:
        schedule_json.loads(broken(edit))
    assert str(err.value).startswith(message), str(err.value)


def test_malformed_json_names_the_file_and_line():
    text = schedule_json.dumps(zb_h1()).replace('"mb": 2', '"mb": 2,', 1)
    with pytest.raises(ScheduleFormatError, match=r"^zb.json: not valid JSON \(.* at line \d+\)$"):
        schedule_json.loads(text, source="zb.json")


def test_fused_problem_rejects_a_w_cost_and_w_actions():
    data = json.loads(schedule_json.dumps(generate("1f1b", 2, 1)))
    data["problem"]["cost"]["W"] = [1, 1]
    with pytest.raises(ScheduleFormatError, match="cost.W: must be absent when split_backward is false"):
        schedule_json.loads(json.dumps(data))
