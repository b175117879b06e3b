"""Commands that read a schedule file: validate, simulate, show."""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from pipesynth.analysis.render import gantt_figure, gantt_text, natural_width, schedule_bars
from pipesynth.cli import command
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import simulate as run_simulation
from pipesynth.core.units import format_memories, format_memory, format_time, memory_label, time_label
from pipesynth.core.validate import find_violations
from pipesynth.errors import InvalidScheduleError, PipesynthError
from pipesynth.formats.files import check_writable
from pipesynth.formats.schedule_json import load

FILE = typer.Argument(..., help="A pipesynth.schedule/1 JSON file.", show_default=False)


def summary(schedule: Schedule) -> str:
    """One line: what the schedule is and its figures, in the problem's units (docs/design.md section 2)."""
    p, m = schedule.problem, schedule.metrics
    head = f"{schedule.name or 'schedule'} on {p.devices} devices, {p.microbatches} microbatches"
    if m is None:
        return head
    return (
        f"{head}: makespan {format_time(m.makespan, p.units)}, bubble rate {m.bubble_rate:.4f}, "
        f"peak memory {format_memories(m.peak_memory, p.units)}"
    )


@command()
def validate(file: Path = FILE) -> None:
    """Check a schedule against every rule; list what breaks.

    Exit code 2 when anything does.

    Example: pipesynth validate schedules/zb-h1-d4-m8.json
    """
    schedule = load(file, validate=False)
    violations = find_violations(schedule)
    if violations:
        for v in violations:
            typer.echo(f"error: {v}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{file}: valid ({schedule.num_actions} actions on {schedule.problem.devices} devices)")


@command()
def simulate(
    file: Path = FILE,
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Time a schedule: makespan, bubble rate, peak memory.

    List scheduling (docs/design.md section 2), figures in the problem's units.

    Example: pipesynth simulate schedules/zb-h1-d4-m8.json --json
    """
    schedule = load(file)
    sim = run_simulation(schedule)
    units = schedule.problem.units
    figures = {
        "makespan": sim.makespan,
        "bubble_rate": round(sim.bubble_rate, 6),
        "peak_memory": list(sim.peak_memory),
        "busy": sim.busy,
        "units": {"time": time_label(units), "memory": memory_label(units)},
    }
    if as_json:
        typer.echo(json.dumps(figures, allow_nan=False))
        return
    typer.echo(
        f"{schedule.name or file}: makespan {format_time(sim.makespan, units)}, bubble rate {sim.bubble_rate:.4f}"
    )
    for d, (peak, busy) in enumerate(zip(sim.peak_memory, sim.busy)):
        typer.echo(f"  device {d}: busy {format_time(busy, units)}, peak memory {format_memory(peak, units)}")


@command()
def show(
    file: Annotated[Path, typer.Argument(help="A pipesynth.schedule/1 JSON file.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also draw the chart to this .png or .svg.")] = None,
    width: Annotated[int | None, typer.Option("--width", "-w", help="Columns of the time axis.", min=1)] = None,
    color: Annotated[
        bool | None, typer.Option("--color/--no-color", help="ANSI colors (default: on a terminal).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Draw a schedule that breaks the rules, its faults marked with !.")
    ] = False,
) -> None:
    """Draw a schedule as a Gantt chart (terminal, PNG, SVG).

    In the terminal, and as an image with --out.

    Example: pipesynth show zb-h1.json --out zb-h1.png
    """
    check_writable(out)
    sched = load(file, validate=False)
    violations = find_violations(sched)
    if violations and not force:
        raise PipesynthError(f"{InvalidScheduleError(violations)}; --force draws it with the faults marked")
    for v in violations:
        typer.echo(f"warning: {v}", err=True)
    if violations:  # stored times and figures may be what is wrong: draw by the rules, or back to back
        plain = [[replace(a, start=None, end=None) for a in dev] for dev in sched.actions]
        sched = replace(sched, actions=plain, metrics=None)
    rows = schedule_bars(sched, faults=faults_of(violations))
    if width is None:
        width = min(natural_width(rows), max(20, shutil.get_terminal_size().columns - 10))
    typer.echo(summary(sched))
    units = sched.problem.units
    typer.echo(gantt_text(rows, width=width, color=sys.stdout.isatty() if color is None else color, units=units))
    if out is not None:
        path = gantt_figure(rows, out, title=summary(sched), units=units)
        typer.echo(f"chart written to {path}")


def faults_of(violations: list[str]) -> set[tuple[int, int]]:
    """(device, position) of every action a violation names (`actions[1][4]...`)."""
    return {(int(d), int(k)) for v in violations for d, k in re.findall(r"actions\[(\d+)\]\[(\d+)\]", v)}
