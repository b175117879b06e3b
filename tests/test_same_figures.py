"""One schedule, the same figures in every command and picture (docs/design.md section 2).

`schedule`, `simulate`, `show`, `demo` and `pareto` must agree on makespan and
peak memory: time in the problem's units, memory in chunk units (the demo
and pareto model has 2D chunks; a V stage is one chunk, a linear stage two).
"""

import json
import re

import pytest
from typer.testing import CliRunner

from pipesynth.cli import app
from pipesynth.core.units import PROFILED, format_memories, format_time

# (generator, its stage in chunks, chunk costs as the demo prints them)
CASES = [
    ("v-half", 1, (1, 1, 1)),
    ("v-min", 1, (3, 4, 2)),
    ("interleaved-1f1b", 1, (3, 4, 2)),
    ("1f1b", 2, (1, 1, 1)),
    ("zb-h1", 2, (3, 4, 2)),
]


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def demo_tables(tmp_path_factory):
    """The demo's two tables (equal costs, then 3/4/2), by cost: {name: (makespan, peak)}."""
    import os

    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("demo"))  # the demo draws into ./out
    try:
        out = run("demo", "--no-train").stdout
    finally:
        os.chdir(here)
    tables: dict[tuple, dict[str, tuple[float, float]]] = {}
    current = None
    for line in out.splitlines():
        head = re.search(r"chunks of F=(\S+), B=(\S+), W=(\S+), comm 0:", line)
        if head:
            current = tables.setdefault(tuple(float(x) for x in head.groups()), {})
        elif current is not None and line and not line.startswith(("schedule", " ")):
            cells = line.split()
            if len(cells) == 6:
                current[cells[0]] = (float(cells[1]), float(cells[4]))
            else:
                current = None
    return tables


@pytest.mark.parametrize("name,stage_chunks,cost", CASES)
def test_schedule_simulate_show_demo_and_pareto_print_the_same_figures(tmp_path, demo_tables, name, stage_chunks, cost):
    stage_cost = ",".join(f"{op}={c * stage_chunks:g}" for op, c in zip("FBW", cost))
    path = tmp_path / "s.json"
    made = run("schedule", name, "-d", 4, "-m", 8, "--cost", stage_cost, "--activation", stage_chunks, "-o", path)
    makespan = float(re.search(r"makespan (\S+),", made.stderr).group(1))
    peaks = re.search(r"peak memory (\S+) chunk units", made.stderr).group(1)
    peak = max(float(x) for x in peaks.split("/"))

    sim = json.loads(run("simulate", path, "--json").stdout)
    assert (sim["makespan"], max(sim["peak_memory"])) == (makespan, peak)
    assert sim["units"] == {"time": "time units", "memory": "chunk units"}

    shown = run("show", path, "--no-color", "--out", tmp_path / "s.png").stdout
    assert f"makespan {makespan:g}," in shown and f"peak memory {peaks} chunk units" in shown
    assert f"span {makespan:g} time units" in shown

    assert demo_tables[tuple(float(c) for c in cost)][name] == (makespan, peak)

    points = json.loads(
        run("pareto", "-d", 4, "-m", 8, "--cost", ",".join(f"{op}={c}" for op, c in zip("FBW", cost)), "--json").stdout
    )
    point = next(p for p in points["points"] if p["name"] == name)
    assert (point["makespan"], point["peak_memory"]) == (makespan, peak)


def test_a_profiled_problem_prints_milliseconds_and_humanised_bytes(tmp_path):
    problem = {
        "devices": 2,
        "microbatches": 4,
        "placement": [0, 1, 1, 0],
        "cost": {"F": 1200, "B": 1300, "W": 800},
        "comm": 50,
        "memory": {"activation": 2245670, "kept_for_w": 1800000},
        "units": {"time": "us", "memory": "bytes"},
    }
    (tmp_path / "p.json").write_text(json.dumps(problem))
    path = tmp_path / "s.json"
    solved = run("solve", "--problem", tmp_path / "p.json", "-t", 1, "--deterministic", "-q", "-o", path)
    sim = json.loads(run("simulate", path, "--json").stdout)
    assert sim["units"] == {"time": "us", "memory": "bytes"}
    makespan = format_time(sim["makespan"], PROFILED)
    peaks = format_memories(sim["peak_memory"], PROFILED)
    assert makespan.endswith(" ms") and peaks.endswith(" MiB")
    assert f"makespan {makespan}," in solved.stderr and f"peak memory {peaks}" in solved.stderr
    text = run("simulate", path).stdout
    assert f"makespan {makespan}," in text and "e+06" not in text
    shown = run("show", path, "--no-color").stdout
    assert f"span {makespan}" in shown and " us," in shown  # the column width in microseconds
