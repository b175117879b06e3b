"""Gantt pictures: bars carry the right chunk, text and images draw every pass."""

import pytest

from pipesynth.analysis.render import Bar, gantt_figure, gantt_text, schedule_bars
from pipesynth.construct import generate
from pipesynth.core.problem import make_problem
from pipesynth.core.simulate import from_order
from pipesynth.errors import PipesynthError


def v_shape_one_microbatch():
    """Two devices, V placement (device 0 holds stages 0 and 3), one microbatch."""
    problem = make_problem(2, 1, "v")
    order = [
        [("F", 0, 0), ("F", 3, 0), ("B", 3, 0), ("W", 3, 0), ("B", 0, 0), ("W", 0, 0)],
        [("F", 1, 0), ("F", 2, 0), ("B", 2, 0), ("W", 2, 0), ("B", 1, 0), ("W", 1, 0)],
    ]
    return from_order(problem, order, "v-test")


def test_bars_follow_planned_times_and_number_chunks_per_device():
    rows = schedule_bars(v_shape_one_microbatch())
    assert [len(r) for r in rows] == [6, 6]
    assert rows[0][0] == Bar(0.0, 1.0, "F", 0, 0, chunk=0)
    assert rows[0][1].stage == 3 and rows[0][1].chunk == 1
    assert {b.chunk for b in rows[1] if b.stage == 2} == {1}
    assert all(b.end > b.start for r in rows for b in r)


def test_bars_of_an_untimed_schedule_are_simulated():
    s = generate("1f1b", 3, 2)
    untimed = type(s)(s.problem, [[a.__class__(a.op, a.stage, a.mb) for a in dev] for dev in s.actions])
    assert schedule_bars(untimed) == schedule_bars(s)


def test_text_gantt_has_a_line_per_device_and_labels_every_pass():
    rows = schedule_bars(generate("1f1b", 4, 8))
    text = gantt_text(rows)
    lines = text.splitlines()
    assert len(lines) == 5  # four devices and the legend
    assert lines[0].startswith("dev 0 |F0F1F2F3")
    for d, line in enumerate(lines[:4]):
        assert line.count("F") == 8 and line.count("B") == 8, f"device {d}: {line}"
    assert "\x1b[" not in text


def test_text_gantt_colors_only_when_asked_and_marks_later_chunks():
    rows = schedule_bars(v_shape_one_microbatch())
    plain = gantt_text(rows, width=24)
    assert "f0" in plain and "b0" in plain  # chunk 1 in lower case
    assert "\x1b[48;5;" in gantt_text(rows, width=24, color=True)


def test_text_gantt_rejects_bad_width_and_labels():
    rows = schedule_bars(generate("gpipe", 2, 2))
    with pytest.raises(PipesynthError, match="width"):
        gantt_text(rows, width=0)
    with pytest.raises(PipesynthError, match="labels"):
        gantt_text(rows, labels=["only one"])


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_figure_writes_png_or_svg_by_suffix(tmp_path, suffix, magic):
    path = gantt_figure(schedule_bars(v_shape_one_microbatch()), tmp_path / f"chart{suffix}", title="v")
    assert path.read_bytes().startswith(magic)


def test_figure_rejects_other_formats(tmp_path):
    with pytest.raises(PipesynthError, match=r"\.png or \.svg"):
        gantt_figure(schedule_bars(generate("gpipe", 2, 2)), tmp_path / "chart.jpg")
