"""The command line: every command works, explains itself, and fails in one line with exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipesynth.cli import app
from pipesynth.construct import GENERATORS
from pipesynth.formats import schedule_json

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def zb_file(tmp_path):
    path = tmp_path / "zb.json"
    result = run("schedule", "zb-h1", "-d", 4, "-m", 8, "--cost", "F=3,B=4,W=2", "-o", path)
    assert result.exit_code == 0, result.output
    return path


def test_list_names_every_generator_with_placement_and_backward():
    out = run("list").stdout
    for gen in GENERATORS.values():
        line = next(line for line in out.splitlines() if line.startswith(gen.name + " "))
        assert gen.placement in line and ("split" if gen.split_backward else "fused") in line


def test_schedule_writes_a_file_and_summarises_on_stderr(zb_file):
    s = schedule_json.load(zb_file)
    assert s.name == "zb-h1" and s.problem.devices == 4 and s.problem.cost_b == (4.0,) * 4
    assert s.metrics.makespan == 8 * 9 + 3 * 5  # m(F+B+W) + (D-1)(F+B-W)


def test_schedule_without_output_prints_json_to_stdout():
    result = run("schedule", "interleaved-1f1b", "-d", 2, "-m", 4, "-v", 3, "--activation", "2", "--comm", "0.5")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["problem"]["placement"] == [0, 1, 0, 1, 0, 1] and data["problem"]["comm"] == 0.5
    assert "interleaved-1f1b on 2 devices, 4 microbatches: makespan" in result.stderr


def test_schedule_takes_caps_per_device_and_relative(tmp_path):
    ok = run("schedule", "zb-h1", "-d", 3, "-m", 6, "--cap", "1x", "-o", tmp_path / "a.json")
    assert ok.exit_code == 0, ok.output
    assert schedule_json.load(tmp_path / "a.json").problem.cap == (3.0, 3.0, 3.0)
    assert run("schedule", "1f1b", "-d", 2, "-m", 2, "--cap", "2:1", "-o", tmp_path / "b.json").exit_code == 0


def test_validate_simulate_and_show_read_a_generated_file(zb_file, tmp_path):
    assert "valid (96 actions on 4 devices)" in run("validate", zb_file).stdout
    figures = json.loads(run("simulate", zb_file, "--json").stdout)
    assert figures["makespan"] == 87 and figures["peak_memory"] == [4, 4, 4, 4]
    shown = run("show", zb_file, "--no-color", "--width", 90, "--out", tmp_path / "chart.png")
    assert shown.exit_code == 0, shown.output
    assert [line.split("|")[0].strip() for line in shown.stdout.splitlines()[1:5]] == [f"dev {d}" for d in range(4)]
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("name", ["schedule", "list", "show", "validate", "simulate"])
def test_every_command_help_has_an_example(name):
    result = run(name, "--help")
    assert result.exit_code == 0 and f"Example: pipesynth {name}" in result.stdout


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["schedule", "zb-h3", "-d", 4, "-m", 8], "unknown generator 'zb-h3'"),
        (["schedule", "1f1b", "-d", 4, "-m", 8, "--cost", "F=3,X=1"], "--cost: cannot read 'X=1'"),
        (["schedule", "1f1b", "-d", 4, "-m", 8, "--activation", "a"], "--activation: cannot read 'a'"),
        (["schedule", "1f1b", "-d", 4, "-m", 8, "--cap", "half"], "--cap: cannot read 'half'"),
        (["schedule", "zb-h2", "-d", 4, "-m", 8, "--cap", "0.5x"], "over its cap 2"),
        (["schedule", "1f1b", "-d", 2, "-m", 2, "--activation", "1:2:3"], "memory.activation: expected 2 values"),
        (["schedule", "interleaved-1f1b", "-d", 4, "-m", 5, "-v", 3], "use a multiple of 4"),
        (["validate", "missing.json"], "missing.json: cannot read"),
        (["schedule", "1f1b", "-m", 8], "pipesynth schedule: Missing option '--devices' / '-d'"),
        (["schedule", "1f1b", "-d", "four", "-m", 8], "Invalid value for '--devices' / '-d'"),
        (["schedule", "1f1b", "-d", 0, "-m", 8], "greater than or equal to 1"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, fragment):
    assert_one_line_error(run(*args), fragment)


def test_validate_lists_every_violation_and_exits_2(zb_file):
    data = json.loads(zb_file.read_text())
    data["actions"][1] = data["actions"][1][2:]  # drop F of microbatches 0 and 1 on device 1
    zb_file.write_text(json.dumps(data))
    result = run("validate", zb_file)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: missing: F of stage 1 microbatch 0 (device 1) is never run",
        "error: missing: F of stage 1 microbatch 1 (device 1) is never run",
    ]


def test_malformed_file_is_one_line_from_a_real_process(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "pipesynth.schedule/1", ')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pipesynth", "simulate", str(bad)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: not valid JSON (Expecting property name enclosed in double quotes at line 1)"
    ]
    assert proc.stdout == ""
