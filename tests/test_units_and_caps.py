"""Byte-size budgets, the `units` key of problem files, and the infeasible-budget message (no torch)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipesynth.core.problem import make_problem, parse_cap
from pipesynth.core.simulate import simulate
from pipesynth.core.units import PROFILED, format_bytes, parse_bytes
from pipesynth.errors import InfeasibleError, PipesynthError, ScheduleFormatError
from pipesynth.formats.schedule_json import load_problem, problem_from_dict, problem_to_dict, save_problem
from pipesynth.plan.budget import plan_problem

KIB = 1024


def bytes_problem(activation=(3000, 1000, 1000, 5000), **kw):
    """Two devices, V placement, heterogeneous stages, memory in bytes."""
    problem = make_problem(2, 4, "v", cost={"F": [2, 1, 1, 3], "B": [2, 1, 1, 3], "W": 1}, activation=list(activation))
    return replace(problem, units=PROFILED, **kw)


@pytest.mark.parametrize(
    "text,expected",
    [("12GiB", 12 * 2**30), ("1.5 MiB", 1.5 * 2**20), ("2KB", 2000), ("512b", 512), ("1e3KiB", 1000 * KIB)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


def test_parse_bytes_plain_number_and_unknown_suffix():
    assert parse_bytes("12") is None
    with pytest.raises(PipesynthError, match="unknown size suffix 'gigs'"):
        parse_bytes("12gigs")


def test_cap_in_bytes_per_device_and_relative():
    p = bytes_problem()
    assert parse_cap("8KiB", p) == (8 * KIB, 8 * KIB)
    assert parse_cap("8KiB:6000", p) == (8 * KIB, 6000.0)
    # relative caps are per device: 1F1B holds min(m, D) = 2 microbatches of each device's activation
    assert parse_cap("0.5x", p) == (0.5 * 2 * 8000, 0.5 * 2 * 2000)


def test_byte_cap_needs_a_problem_in_bytes():
    with pytest.raises(PipesynthError, match="byte size, but this problem's memory is not in bytes"):
        parse_cap("1GiB", make_problem(2, 4))


def test_units_round_trip_through_a_problem_file(tmp_path):
    p = bytes_problem()
    save_problem(p, tmp_path / "p.json")
    back = load_problem(tmp_path / "p.json")
    assert back == p and back.units == PROFILED
    assert "units" not in problem_to_dict(make_problem(2, 4))


def test_units_reader_names_the_bad_key():
    data = problem_to_dict(bytes_problem())
    data["units"] = {"time": "us", "memroy": "bytes"}
    with pytest.raises(ScheduleFormatError, match="units.memroy: unknown key"):
        problem_from_dict(data)


def test_budget_too_small_names_the_smallest_feasible_budget_in_bytes():
    p = bytes_problem()
    # device 0 holds stages 0 and 3: one microbatch needs 3000 + 5000 bytes there
    with pytest.raises(InfeasibleError) as err:
        plan_problem(p, "7000", time_limit=1)
    assert "8000 bytes" in str(err.value) and "device 0" in str(err.value)
    assert format_bytes(8000) in str(err.value)


def test_plan_fits_a_byte_budget_and_beats_or_equals_every_handcrafted_schedule():
    p = bytes_problem()
    plan = plan_problem(p, "12000", time_limit=2, deterministic=True)
    assert plan.problem.cap == (12000.0, 12000.0)
    assert all(peak <= 12000 for peak in simulate(plan).peak_memory)
    rivals = plan.provenance["handcrafted_makespan"]
    assert "sequential" in rivals
    assert plan.metrics.makespan <= min(rivals.values())
