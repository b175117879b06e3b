"""Closed forms of the simplest schedules, through the public API."""

import subprocess
import sys

import pytest

from pipesynth import validate
from pipesynth.construct import generate
from pipesynth.formats import schedule_json


@pytest.mark.parametrize("devices,microbatches", [(2, 1), (4, 8), (8, 32), (5, 3)])
def test_1f1b_bubble_rate_matches_closed_form(devices, microbatches):
    s = generate("1f1b", devices, microbatches)
    validate(s)
    assert s.metrics.bubble_rate == pytest.approx((devices - 1) / (microbatches + devices - 1), abs=1e-6)
    assert s.metrics.peak_memory[0] == min(devices, microbatches)


def test_schedule_file_round_trip_is_identity():
    s = generate("gpipe", 3, 4, cost={"F": 3, "B": 4, "W": 2}, comm=0.5)
    again = schedule_json.loads(schedule_json.dumps(s))
    assert again == s


def test_import_pipesynth_does_not_import_torch():
    code = "import sys, pipesynth, pipesynth.cli, pipesynth.construct; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
