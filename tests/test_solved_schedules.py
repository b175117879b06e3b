"""The solved files in schedules/: proven figures consistent with simulation, and all indexed."""

from pathlib import Path

import pytest

from pipesynth.core.simulate import simulate
from pipesynth.formats import schedule_json
from pipesynth.solver import makespan_lower_bound, smallest_feasible_cap

HERE = Path(__file__).resolve().parents[1] / "schedules"
FILES = sorted(HERE.glob("solved-*.json"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_solved_file_records_a_sound_bound_and_fits_its_cap(path):
    s = schedule_json.load(path)
    sim = simulate(s)
    prov = s.provenance
    assert makespan_lower_bound(s.problem) <= prov["lower_bound"] + 1e-9
    assert prov["lower_bound"] <= sim.makespan + 1e-9
    assert prov["gap"] == pytest.approx((sim.makespan - prov["lower_bound"]) / sim.makespan, abs=1e-6)
    assert all(peak <= cap + 1e-9 for peak, cap in zip(sim.peak_memory, s.problem.cap))
    if "cap_note" in prov:  # a raised cap is exactly the smallest feasible one
        assert s.problem.cap == smallest_feasible_cap(s.problem)


def test_index_lists_every_solved_file():
    index = (HERE / "README.md").read_text()
    assert FILES, "no solved schedules checked in"
    for path in FILES:
        assert f"[{path.name}]({path.name})" in index
