"""The solved files in schedules/: valid, with sound recorded bounds, proven optimal where small, all indexed."""

from pathlib import Path

import pytest

from pipesynth.core.simulate import simulate
from pipesynth.core.validate import find_violations
from pipesynth.formats import schedule_json
from pipesynth.solver.bounds import ARGUMENTS, lower_bound, smallest_feasible_cap

HERE = Path(__file__).resolve().parents[1] / "schedules"
FILES = sorted(HERE.glob("solved-*.json"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_solved_file_is_valid_records_a_sound_bound_and_fits_its_cap(path):
    s = schedule_json.load(path)
    assert find_violations(s) == []
    sim = simulate(s)
    prov = s.provenance
    assert lower_bound(s.problem).value <= prov["lower_bound"] + 1e-9 <= sim.makespan + 2e-9
    assert prov["bound_argument"] in (*ARGUMENTS, "cp-sat")
    assert prov["gap"] == pytest.approx((sim.makespan - prov["lower_bound"]) / sim.makespan, abs=1e-6)
    assert all(peak <= cap + 1e-9 for peak, cap in zip(sim.peak_memory, s.problem.cap))
    assert "seconds" not in prov  # wall clock lives in schedules/solved.log, so reruns are byte-identical
    if "cap_note" in prov:  # a raised cap is exactly the smallest feasible one
        assert s.problem.cap == smallest_feasible_cap(s.problem)


SMALL = [p for p in FILES if (lambda s: s.problem.devices <= 4 and s.problem.microbatches <= 16)(schedule_json.load(p))]


@pytest.mark.parametrize("path", SMALL, ids=[p.name for p in SMALL])
def test_small_solved_file_is_proven_optimal(path):
    s = schedule_json.load(path)
    assert s.provenance["status"] == "optimal"
    assert s.provenance["lower_bound"] == s.metrics.makespan


def test_index_lists_every_solved_file():
    index = (HERE / "README.md").read_text()
    assert FILES, "no solved schedules checked in"
    assert len(SMALL) == 15  # D = 2 (m = 4, 8, 16) and D = 4 (m = 8, 16), three caps each
    for path in FILES:
        assert f"[{path.name}]({path.name})" in index
