"""Gantt pictures of a schedule: one row per device, one box per pass.

`schedule_bars` turns a schedule into plain bars (time, pass, chunk), and the
two drawers only read bars, so anything with bars (a simulation, a measured
run of the executor) can be drawn the same way: `gantt_text` for the
terminal, `gantt_figure` for PNG/SVG through matplotlib (an optional extra,
imported only when a picture is asked for).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence, Set
from dataclasses import dataclass, replace
from pathlib import Path

from pipesynth.core.problem import Problem
from pipesynth.core.schedule import Action, Schedule
from pipesynth.core.units import Units, format_time, time_label, time_scale
from pipesynth.errors import InvalidScheduleError, PipesynthError
from pipesynth.formats.files import write_bytes_atomic

#: Box colors per pass, one shade per chunk (darker for later chunks), as in
#: the Zero Bubble and V-shape papers' figures: F blue, B teal/green, W purple.
COLORS = {
    "F": ("#8fbde6", "#2f6eb5", "#173f73"),
    "B": ("#8fd9c0", "#2a9d78", "#155c45"),
    "W": ("#c9bfe6", "#8c76c7", "#553d91"),
}
#: ANSI 256-color backgrounds matching COLORS, for `gantt_text(color=True)`.
ANSI = {
    "F": (111, 26, 18),
    "B": (79, 36, 23),
    "W": (183, 98, 54),
}
IDLE = "."
MICRO = "\u00b5s"  # the picture's axis may spell microseconds properly
#: How a pass that breaks a rule is drawn in a picture (`show --force`).
FAULT_EDGE = {"edgecolor": "#d62728", "lw": 1.5, "hatch": "//"}


@dataclass(frozen=True)
class Bar:
    """One pass drawn as a box from `start` to `end` on its device's row; `fault` marks a pass that breaks a rule."""

    start: float
    end: float
    op: str
    stage: int
    mb: int
    chunk: int = 0
    fault: bool = False


def schedule_bars(schedule: Schedule, faults: Set[tuple[int, int]] = frozenset()) -> list[list[Bar]]:
    """One row of bars per device; `chunk` is the stage's index among its device's stages.

    Uses the schedule's planned times, or simulates it when any are missing;
    a schedule that cannot be simulated (drawn anyway, `show --force`) runs
    each device's passes back to back. `faults` holds the (device, position)
    of passes to mark.
    """
    if any(a.start is None or a.end is None for a in schedule.all_actions()):
        from pipesynth.core.simulate import simulate

        try:
            schedule = simulate(schedule).timed_schedule()
        except InvalidScheduleError:
            schedule = replace(schedule, actions=[_back_to_back(schedule.problem, dev) for dev in schedule.actions])
    problem = schedule.problem
    chunk_of = {}
    for d in range(problem.devices):
        for c, s in enumerate(problem.stages_on(d)):
            chunk_of[s] = c
    return [
        [Bar(a.start, a.end, a.op, a.stage, a.mb, chunk_of[a.stage], (d, k) in faults) for k, a in enumerate(dev)]
        for d, dev in enumerate(schedule.actions)
    ]


def _back_to_back(problem: Problem, actions: list[Action]) -> list[Action]:
    """One device's passes one after another from time 0, ignoring what they wait for."""
    out, now = [], 0.0
    for a in actions:
        end = now + problem.cost(a.op, a.stage)
        out.append(replace(a, start=now, end=end))
        now = end
    return out


def _span(rows: Sequence[Sequence[Bar]]) -> tuple[float, float]:
    bars = [b for row in rows for b in row]
    if not bars:
        return 0.0, 0.0
    return min(b.start for b in bars), max(b.end for b in bars)


def _shade(table: dict[str, tuple], op: str, chunk: int):
    shades = table.get(op, table["F"])
    return shades[min(chunk, len(shades) - 1)]


def _shortest(rows: Sequence[Sequence[Bar]]) -> float:
    return min((b.end - b.start for row in rows for b in row if b.end > b.start), default=1.0)


def natural_width(rows: Sequence[Sequence[Bar]], limit: int = 160) -> int:
    """Columns giving the shortest pass two characters, at most `limit`."""
    t0, t1 = _span(rows)
    if t1 <= t0:
        return 1
    return max(1, min(limit, math.ceil(2 * (t1 - t0) / _shortest(rows))))


def time_per_column(rows: Sequence[Sequence[Bar]], width: int) -> float:
    """The finest scale fitting `width` columns that keeps boxes aligned.

    Scales are the shortest pass's duration divided by 2 or 1, or times a
    whole number, so passes of common costs span whole columns.
    """
    t0, t1 = _span(rows)
    needed = (t1 - t0) / width
    q = _shortest(rows)
    if needed <= q / 2:
        return q / 2
    return q * math.ceil(needed / q - 1e-9)


def _box_label(bar: Bar, width: int, color: bool) -> str:
    """`F3`, or in narrow boxes the microbatch alone (color tells the pass) or the pass alone; `!` marks a fault."""
    op = bar.op if bar.chunk == 0 else bar.op.lower()
    mark = "!" if bar.fault else ""
    for label in (f"{mark}{op}{bar.mb}", f"{mark}{bar.mb}" if color else f"{mark}{op}", mark + op, mark or op):
        if len(label) <= width:
            return label.ljust(width)
    return (mark or op)[:width]


def gantt_text(
    rows: Sequence[Sequence[Bar]],
    width: int | None = None,
    labels: Sequence[str] | None = None,
    color: bool = False,
    units: Units | None = None,
) -> str:
    """A terminal Gantt chart: a line per device, each box labelled with its pass and microbatch.

    `width` caps the columns of the time axis (default: the shortest pass
    gets two, up to 160); see `time_per_column` for the scale. Labels read `F3` (forward of microbatch 3);
    later chunks use lower case (`f3`). With `color`, boxes get ANSI
    background colors like the image's. `units` are the problem's (the
    legend says what a column is: `0.5 time units`, `250 us`).
    """
    labels = list(labels) if labels is not None else [f"dev {d}" for d in range(len(rows))]
    if len(labels) != len(rows):
        raise PipesynthError(f"labels: expected {len(rows)} (one per row), got {len(labels)}")
    width = natural_width(rows) if width is None else width
    if width < 1:
        raise PipesynthError(f"width: must be at least 1 column, got {width}")
    t0, t1 = _span(rows)
    scale = time_per_column(rows, width) if t1 > t0 else 1.0
    width = max(1, math.ceil((t1 - t0) / scale - 1e-9))
    pad = max((len(label) for label in labels), default=0)
    lines = []
    for label, row in zip(labels, rows):
        cells: list[str] = [IDLE] * width
        for bar in sorted(row, key=lambda b: b.start):
            c0 = min(width - 1, round((bar.start - t0) / scale))
            c1 = max(c0 + 1, min(width, round((bar.end - t0) / scale)))
            text = _box_label(bar, c1 - c0, color)
            if color:
                bg = _shade(ANSI, bar.op, bar.chunk)
                fg = 16 if bar.chunk == 0 else 231
                text = f"\x1b[48;5;{bg}m\x1b[38;5;{fg}m{text}\x1b[0m"
                cells[c0:c1] = [text] + [""] * (c1 - c0 - 1)
            else:
                cells[c0:c1] = list(text)
        lines.append(f"{label.rjust(pad)} |{''.join(cells)}|")
    legend = "F forward, B input gradient, W weight gradient; digits: microbatch; lower case: chunk >= 1"
    if any(bar.fault for row in rows for bar in row):
        legend += "; ! breaks a rule"
    column, span = _time_text(scale, units), _time_text(t1 - t0, units)
    lines.append(f"{' ' * pad}  {legend}; '{IDLE}' idle; 1 column = {column}, span {span}")
    return "\n".join(lines)


def _time_text(value: float, units: Units | None) -> str:
    return f"{value:g} {time_label(units)}" if units is None else format_time(value, units)


def gantt_figure(
    rows: Sequence[Sequence[Bar]],
    path: str | os.PathLike[str],
    title: str = "",
    units: Units | None = None,
) -> Path:
    """Draw the bars to a PNG or SVG file (by suffix), one row per device; return the path.

    Boxes are colored by pass and chunk (COLORS) with the microbatch number
    inside when it fits; the time axis is in the problem's `units` (ms or
    us when it has them). Needs matplotlib (`pip install 'pipesynth[plot]'`).
    """
    target = Path(path)
    fmt = target.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise PipesynthError(f"{target}: picture format must be .png or .svg, got {target.suffix or 'no suffix'!r}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise PipesynthError("pictures need matplotlib: pip install 'pipesynth[plot]'") from None

    t0, t1 = _span(rows)
    span = max(t1 - t0, 1e-9)
    durations = [b.end - b.start for row in rows for b in row if b.end > b.start]
    shortest = min(durations, default=span)
    fig_w = min(24.0, max(6.0, 0.3 * span / shortest))
    fig_h = 1.0 + 0.45 * max(len(rows), 1)
    fig = Figure(figsize=(fig_w, fig_h))
    FigureCanvasAgg(fig)  # no pyplot: no global backend state is touched
    ax = fig.add_subplot()
    points_per_unit = 0.85 * fig_w * 72 / span
    used: dict[tuple[str, int], str] = {}
    for d, row in enumerate(rows):
        for bar in row:
            face = _shade(COLORS, bar.op, bar.chunk)
            used[(bar.op, bar.chunk)] = face
            edge = FAULT_EDGE if bar.fault else {"edgecolor": "white", "lw": 0.5}
            ax.barh(d, bar.end - bar.start, left=bar.start - t0, height=0.8, color=face, **edge)
            text = str(bar.mb)
            size = min(9.0, 0.7 * (bar.end - bar.start) * points_per_unit / max(len(text), 1))
            if size >= 4:
                ink = "black" if bar.chunk == 0 else "white"
                mid = (bar.start + bar.end) / 2 - t0
                ax.text(mid, d, text, ha="center", va="center", fontsize=size, color=ink)
    ax.set_yticks(range(len(rows)), [f"device {d}" for d in range(len(rows))])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, span)
    divisor, unit = time_scale(span, units)
    if divisor != 1:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x / divisor:g}"))
    ax.set_xlabel("time, in units of the pass costs" if units is None else f"time ({MICRO if unit == 'us' else unit})")
    if title:
        ax.set_title(title)
    several_chunks = len({c for _, c in used}) > 1
    handles = [
        Patch(color=face, label=op + (f" chunk {chunk}" if several_chunks else ""))
        for (op, chunk), face in sorted(used.items(), key=lambda kv: ("FBW".find(kv[0][0]), kv[0][1]))
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    picture = io.BytesIO()
    fig.savefig(picture, format=fmt, bbox_inches="tight", dpi=120)
    return write_bytes_atomic(target, picture.getvalue())
