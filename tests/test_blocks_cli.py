"""The block and pareto commands, and the pareto points behind them."""

import json

import pytest
from typer.testing import CliRunner

from pipesynth.analysis.pareto import ParetoPoint, mark_frontier, pareto_points, same_model_schedules
from pipesynth.cli import app


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_block_draws_and_reports_interval_lifespans_and_bound(tmp_path):
    result = run("block", "v-half", "--devices", 4, "--out", tmp_path / "b.png")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.lstrip().startswith("dev ")]
    assert len(rows) == 4 and "F0" in rows[0]
    assert "interval T = 6" in result.stdout
    # device 0 of V-Half at 4 devices: chunk 0 lives 30 slots (5 copies), chunk 1 lives 6 (1 copy)
    assert "lifespan per stage (time units): 0: 30," in result.stdout and "7: 6" in result.stdout
    assert "memory bound per device (sum of ceil(l/T) x activation, chunk units): 6, 6, 6, 6" in result.stdout
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")


def test_block_with_costs_uses_the_steady_state_interval():
    result = run("block", "v-half", "-d", 3, "--cost", "F=3,B=4,W=2")
    assert result.exit_code == 0 and "interval T = 18" in result.stdout


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["block", "zb-h1", "-d", 4], "no building block named 'zb-h1'"),
        (["pareto", "-d", 4, "-m", 8, "--cost", "F=x"], "--cost F: cannot read 'x'"),
    ],
)
def test_bad_input_is_one_line(args, fragment):
    result = run(*args)
    assert result.exit_code == 2 and fragment in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["block", "pareto"])
def test_help_has_an_example(name):
    result = run(name, "--help")
    assert result.exit_code == 0 and f"Example: pipesynth {name}" in result.stdout


def test_pareto_json_has_every_generator_and_1f1b_is_the_memory_unit(tmp_path):
    result = run("pareto", "-d", 4, "-m", 8, "--json", "--out", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    points = {p["name"]: p for p in json.loads(result.stdout)["points"]}
    assert {"1f1b", "zb-h1", "v-min", "v-half", "zb-v"} <= set(points)
    assert points["1f1b"]["relative_memory"] == 1
    assert points["v-min"]["relative_memory"] < points["v-half"]["relative_memory"] < 1
    assert points["v-min"]["frontier"]  # the least memory is never beaten
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_pareto_table_marks_the_frontier():
    result = run("pareto", "-d", 3, "-m", 6, "--cost", "F=3,B=4,W=2")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["schedule", "peak/1F1B"]
    gpipe = next(line for line in lines if line.startswith("gpipe"))
    assert not gpipe.rstrip().endswith("*")  # 1F1B has gpipe's bubble at less memory


def test_frontier_is_the_non_dominated_points():
    pts = [
        ParetoPoint("a", 10, 0.3, 1, 0.5),
        ParetoPoint("b", 9, 0.1, 2, 1.0),
        ParetoPoint("c", 9, 0.2, 2, 1.0),  # beaten by b
        ParetoPoint("d", 8, 0.1, 3, 1.5),  # beaten by b
    ]
    assert [p.frontier for p in mark_frontier(pts)] == [True, True, False, False]


def test_pareto_points_skip_generators_that_refuse():
    schedules, skipped = same_model_schedules(1, 4)  # V-shape needs 2 devices
    points = pareto_points(schedules)
    assert "v-half" not in {p.name for p in points} and any(s.startswith("v-half:") for s in skipped)
    assert {p.name for p in points} == {s.name for s in schedules} and "1f1b" in {p.name for p in points}
