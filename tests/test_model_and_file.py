"""The problem model and the schedule file: broadcasting, placements, caps, lossless round trips."""

import json

import pytest

from pipesynth.construct import GENERATORS, generate
from pipesynth.core.problem import make_problem, one_f_one_b_peak, parse_cap, placement_for
from pipesynth.errors import PipesynthError, ScheduleFormatError
from pipesynth.formats import schedule_json


def test_scalars_broadcast_to_every_stage_and_lists_stay_per_stage():
    p = make_problem(2, 4, cost={"F": 3, "B": [4, 5]}, activation=2)
    assert p.cost_f == (3.0, 3.0) and p.cost_b == (4.0, 5.0) and p.cost_w == (1.0, 1.0)
    assert p.activation == p.kept_for_w == (2.0, 2.0)
    assert p.ops == ("F", "B", "W") and p.stages == 2


@pytest.mark.parametrize(
    "kind,chunks,expected",
    [
        ("linear", 1, (0, 1, 2, 3)),
        ("loop", 2, (0, 1, 2, 3, 0, 1, 2, 3)),
        ("v", 1, (0, 1, 2, 3, 3, 2, 1, 0)),
    ],
)
def test_named_placements(kind, chunks, expected):
    assert placement_for(kind, 4, chunks) == expected


def test_fused_problem_folds_w_into_b_and_has_no_w_pass():
    p = make_problem(3, 2, cost={"F": 3, "B": 4, "W": 2}, split_backward=False)
    assert p.cost_b == (6.0,) * 3 and p.cost_w == (0.0,) * 3 and p.ops == ("F", "B")
    assert p.fused() is p and make_problem(3, 2, cost={"F": 3, "B": 4, "W": 2}).fused() == p


def test_work_lower_bound_is_the_busiest_device():
    p = make_problem(2, 5, placement=[0, 0, 1], cost={"F": [1, 2, 1], "B": 1, "W": 0})
    assert p.work_lower_bound() == 5 * (1 + 2 + 2)
    assert p.total_work() == 5 * (4 + 3)


def test_relative_cap_is_a_share_of_1f1b_peak_per_device():
    p = make_problem(4, 8, "v", activation=[1, 1, 1, 1, 2, 2, 2, 2])
    assert one_f_one_b_peak(p) == (12.0, 12.0, 12.0, 12.0)  # 4 microbatches x (1 + 2)
    assert parse_cap("0.5x", p) == (6.0,) * 4
    assert parse_cap("5", p) == (5.0,) * 4 and parse_cap([1, 2, 3, 4], p) == (1.0, 2.0, 3.0, 4.0)
    assert one_f_one_b_peak(make_problem(4, 2)) == (2.0,) * 4  # fewer microbatches than devices


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: make_problem(0, 4), "devices: must be at least 1, got 0"),
        (lambda: make_problem(2, 0), "microbatches: must be at least 1, got 0"),
        (lambda: make_problem(2, 2, "ring"), "placement: unknown kind 'ring'"),
        (lambda: make_problem(3, 2, [0, 0, 1]), "placement: device 2 holds no stage"),
        (lambda: make_problem(2, 2, cost={"X": 1}), "cost: unknown pass 'X'"),
        (lambda: make_problem(2, 2, cost={"F": [1, 2, 3]}), "cost.F: expected 2 values (one per stage), got 3"),
        (lambda: make_problem(2, 2, cost={"B": -1}), "cost.B[0]: must be non-negative, got -1"),
        (lambda: make_problem(2, 2, activation=1, kept_for_w=2), "memory.kept_for_w[0]: 2 exceeds the activation 1"),
        (lambda: make_problem(2, 2, cap=[1]), "memory.cap: expected 2 values (one per device), got 1"),
        (lambda: make_problem(2, 2, comm=float("nan")), "comm: expected a finite number, got nan"),
        (lambda: parse_cap("half", make_problem(2, 2)), "memory: cannot read 'half'"),
    ],
)
def test_bad_problems_name_the_field(call, message):
    with pytest.raises(PipesynthError) as err:
        call()
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_file_round_trip_is_lossless(name):
    s = generate(name, 3, 6, chunks=2, cost={"F": 1.5, "B": 2, "W": 0.25}, comm=0.1, activation=3, cap="2x")
    text = schedule_json.dumps(s)
    assert schedule_json.loads(text) == s
    assert schedule_json.dumps(schedule_json.loads(text)) == text


def test_file_follows_the_design_layout():
    data = json.loads(schedule_json.dumps(generate("1f1b", 2, 2, cost={"F": 1, "B": 2, "W": 1})))
    assert list(data) == ["format", "name", "problem", "actions", "metrics", "provenance"]
    assert data["problem"]["cost"] == {"F": [1, 1], "B": [3, 3]}  # fused: B is the whole backward, no W
    assert data["problem"]["split_backward"] is False and data["problem"]["memory"]["cap"] is None
    assert data["actions"][1][0] == {"op": "F", "stage": 1, "mb": 0, "start": 1, "end": 2}
    assert data["metrics"] == {"makespan": 12, "bubble_rate": 0.333333, "peak_memory": [2, 1]}


def test_reader_accepts_scalars_defaults_and_actions_without_times():
    text = json.dumps(
        {
            "format": "pipesynth.schedule/1",
            "problem": {"devices": 1, "microbatches": 1, "placement": [0], "cost": {"F": 1, "B": 2, "W": 1}},
            "actions": [
                [{"op": "F", "stage": 0, "mb": 0}, {"op": "B", "stage": 0, "mb": 0}, {"op": "W", "stage": 0, "mb": 0}]
            ],
        }
    )
    s = schedule_json.loads(text)
    p = s.problem
    assert p.split_backward and p.comm == 0 and p.activation == p.kept_for_w == (1.0,) and p.cap is None
    assert s.name == "" and s.metrics is None and s.actions[0][1].start is None


def test_load_problem_reads_a_problem_file_or_a_schedule_file(tmp_path):
    s = generate("zb-h2", 2, 3, comm=1)
    schedule_json.save(s, tmp_path / "s.json")
    schedule_json.save_problem(s.problem, tmp_path / "p.json")
    assert schedule_json.load_problem(tmp_path / "s.json") == s.problem
    assert schedule_json.load_problem(tmp_path / "p.json") == s.problem
    with pytest.raises(ScheduleFormatError, match="devices: missing"):
        (tmp_path / "q.json").write_text("{}")
        schedule_json.load_problem(tmp_path / "q.json")


def test_save_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "deep" / "s.json"
    schedule_json.save(generate("gpipe", 2, 2), target)
    schedule_json.save(generate("1f1b", 3, 3), target)
    assert schedule_json.load(target).name == "1f1b"
    assert [p.name for p in target.parent.iterdir()] == ["s.json"]
