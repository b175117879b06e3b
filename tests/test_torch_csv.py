"""Export to / import from torch.distributed.pipelining's compute-only CSV (no torch needed)."""

import re

import pytest
from typer.testing import CliRunner

from pipesynth.cli import app
from pipesynth.construct import GENERATORS, generate
from pipesynth.errors import InvalidScheduleError, ScheduleFormatError
from pipesynth.formats.schedule_json import load, save
from pipesynth.formats.torch_csv import from_torch_csv, to_torch_csv

CHUNKS = {"loop": 2}


def orders(schedule):
    return [[a.key for a in dev] for dev in schedule.actions]


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_round_trip_keeps_every_device_order(name):
    gen = GENERATORS[name]
    s = generate(name, 4, 8, chunks=CHUNKS.get(gen.placement, 1), cost={"F": 3, "B": 4, "W": 2})
    back = from_torch_csv(to_torch_csv(s), cost={"F": 3, "B": 4, "W": 2})
    assert orders(back) == orders(s)
    assert back.problem.placement == s.problem.placement
    assert back.problem.split_backward == s.problem.split_backward
    assert back.metrics.makespan == s.metrics.makespan


def test_cells_follow_torch_syntax():
    text = to_torch_csv(generate("1f1b", 2, 2))
    assert text.splitlines() == ["0F0,0F1,0B0,0B1", "1F0,1B0,1F1,1B1"]


def test_split_backward_is_written_as_I_and_read_back_as_B():
    rows = "0F0,1F0,1I0,0I0,1W0,0W0\n"
    s = from_torch_csv(rows)
    assert s.problem.split_backward and s.problem.placement == (0, 0)
    assert [a.op for a in s.actions[0]] == ["F", "F", "B", "B", "W", "W"]
    assert to_torch_csv(s) == rows


@pytest.mark.parametrize(
    "text,message",
    [
        ("0F0,0B0\n1F0,1SEND_F0\n", "rank 1, cell 1: '1SEND_F0' is a SEND_F action"),
        ("0F0,0B0\n1F0,0B1\n", "rank 1, cell 1: stage 0 is already on rank 0"),
        ("0F0,0X0\n", "rank 0, cell 1: unknown op 'X'"),
        ("0F0,0I0,0W0\n1F0,1B0\n", "rank 1, cell 1: a fused backward (B) in a split schedule"),
        ("0F0,0B0\n2F0,2B0\n", "stage 1 appears on no rank"),
        ("0F0,0B0\n\n1F0,1B0\n", "rank 1 has no actions"),
        ("0F,0B0\n", "rank 0, cell 0: '0F' has no microbatch number"),
    ],
)
def test_bad_csv_names_the_cell_at_fault(text, message):
    with pytest.raises(ScheduleFormatError, match=re.escape(message)):
        from_torch_csv(text)


def test_deadlocked_order_is_rejected_with_its_cells():
    with pytest.raises(InvalidScheduleError, match=r"deadlock: .*at rank 1, cell 2"):
        from_torch_csv("0F0,0B0\n,1B0,1F0\n")


def test_cli_export_then_import(tmp_path):
    s = generate("1f1b", 3, 5, cost={"F": 2, "B": 3, "W": 1})
    save(s, tmp_path / "s.json")
    runner = CliRunner()
    out = runner.invoke(app, ["export", str(tmp_path / "s.json"), "--to", "torch-csv", "-o", str(tmp_path / "s.csv")])
    assert out.exit_code == 0, out.output
    args = ["import", str(tmp_path / "s.csv"), "-o", str(tmp_path / "back.json"), "--cost", "F=2,B=3,W=1"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    back = load(tmp_path / "back.json")
    assert orders(back) == orders(s)
    assert back.metrics == s.metrics
    assert back.name == "s"


def test_cli_export_writes_the_placement_next_to_the_csv_and_prints_torchtitan_settings(tmp_path):
    import json

    save(generate("zb-v", 2, 4), tmp_path / "v.json")
    args = ["export", str(tmp_path / "v.json"), "--to", "torch-csv", "-o", str(tmp_path / "v.csv")]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    sidecar = json.loads((tmp_path / "v.placement.json").read_text())
    assert sidecar["placement"] == [0, 1, 1, 0] and sidecar["kind"] == "v"
    assert sidecar["stages_on_rank"] == [[0, 3], [1, 2]]
    assert f"--parallelism.pipeline_parallel_schedule_csv {tmp_path / 'v.csv'}" in out.output
    assert "style='v'" in out.output  # torchtitan places a CSV schedule's stages as a loop by default
    assert from_torch_csv((tmp_path / "v.csv").read_text()).problem.placement == (0, 1, 1, 0)


def test_cli_import_error_is_one_line(tmp_path):
    (tmp_path / "bad.csv").write_text("0F0,0RECV_B0\n")
    out = CliRunner().invoke(app, ["import", str(tmp_path / "bad.csv")])
    assert out.exit_code == 2
    assert "rank 0, cell 1" in out.output and "Traceback" not in out.output
