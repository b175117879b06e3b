"""`pipesynth solve`: writes a valid file with provenance, and fails in one line."""

import json

from typer.testing import CliRunner

from pipesynth.cli import app
from pipesynth.core.problem import make_problem
from pipesynth.core.validate import find_violations
from pipesynth.formats import schedule_json

FAST = ["--time-limit", "1", "--workers", "1", "--deterministic"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_solve_writes_a_valid_schedule_with_provenance_and_progress(tmp_path):
    out = tmp_path / "s.json"
    result = run("solve", "-d", 3, "-m", 6, "--memory", "0.5x", "--cost", "F=3,B=4,W=2", *FAST, "-o", out)
    assert result.exit_code == 0, result.output
    schedule = schedule_json.load(out)
    assert find_violations(schedule) == []
    assert schedule.problem.cap == (3.0, 3.0, 3.0)  # half of 1F1B's 3 microbatches x 2 chunk units
    prov = schedule.provenance
    assert prov["status"] in ("optimal", "feasible")
    assert prov["lower_bound"] <= schedule.metrics.makespan
    assert {"method", "gap", "seconds", "bound_argument", "cp_sat_bound"} <= set(prov)
    assert "block:" in result.stderr and "gap" in result.stderr
    assert f"lower bound {prov['lower_bound']:g} ({prov['bound_argument']})" in result.stderr


def test_quiet_prints_no_progress(tmp_path):
    result = run("solve", "-d", 2, "-m", 2, "--quiet", *FAST, "-o", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert "block:" not in result.stderr


def test_problem_file_with_explicit_placement_and_fused_backward(tmp_path):
    problem = make_problem(2, 3, [0, 1, 1, 0], cost={"F": 1, "B": 2}, split_backward=False, cap=4)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(schedule_json.problem_to_dict(problem)))
    result = run("solve", "--problem", path, "-q", *FAST)
    assert result.exit_code == 0, result.output
    schedule = schedule_json.loads(result.stdout)
    assert schedule.problem == problem
    assert find_violations(schedule) == []


def test_infeasible_cap_exits_2_naming_the_smallest_feasible_cap(tmp_path):
    result = run("solve", "-d", 4, "-m", 8, "--memory", "1.5", *FAST, "-o", tmp_path / "s.json")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: infeasible: no schedule fits 1.5 units on device 0; the smallest feasible cap is 2"
    )
    assert not (tmp_path / "s.json").exists()


def test_bad_inputs_fail_in_one_line():
    for args, fragment in [
        (["solve", "-m", 4], "--devices"),
        (["solve", "-d", 2, "-m", 4, "--placement", "zigzag"], "--placement"),
        (["solve", "-d", 2, "-m", 4, "--memory", "lots"], "memory"),
        (["solve", "-d", 2, "-m", 4, "--cost", "X=1"], "--cost"),
    ]:
        result = run(*args, *FAST)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_pareto_solve_adds_the_solver_points():
    result = run("pareto", "-d", 2, "-m", 4, "--solve", "--solve-time", 1)
    assert result.exit_code == 0, result.output
    assert "solve@1x" in result.stdout
    assert "solve@0.3x: infeasible" in result.stderr  # below one microbatch of a device's activation
