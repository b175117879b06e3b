"""Every schedule file in schedules/ is valid and its recorded metrics are what the simulator says."""

from pathlib import Path

import pytest

from pipesynth.core.simulate import simulate
from pipesynth.core.validate import find_violations
from pipesynth.formats import schedule_json

FILES = sorted((Path(__file__).resolve().parents[1] / "schedules").glob("*.json"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_checked_in_schedule_is_valid_and_its_metrics_are_current(path):
    s = schedule_json.load(path)
    assert find_violations(s) == []
    assert s.metrics == simulate(s).metrics
    planned = [(a.start, a.end) for a in s.all_actions()]
    assert planned == [(a.start, a.end) for a in simulate(s).timed_schedule().all_actions()]
