"""Commands that make and draw schedules: schedule, list, show."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipesynth.cli import command
from pipesynth.cli.options import parse_cap_option, parse_cost, parse_numbers
from pipesynth.errors import PipesynthError
from pipesynth.generators import GENERATORS, generate
from pipesynth.render import gantt_figure, gantt_text, natural_width, schedule_bars
from pipesynth.schedule import Schedule
from pipesynth.schedule_file import dumps, load, save
from pipesynth.validate import find_violations


def summary(schedule: Schedule) -> str:
    """One line: what the schedule is and its figures."""
    p, m = schedule.problem, schedule.metrics
    figures = "" if m is None else f": makespan {m.makespan:g}, bubble rate {m.bubble_rate:.4f}, peak memory "
    peaks = "" if m is None else "/".join(f"{x:g}" for x in m.peak_memory)
    return f"{schedule.name or 'schedule'} on {p.devices} devices, {p.microbatches} microbatches{figures}{peaks}"


@command()
def schedule(
    name: Annotated[str, typer.Argument(help="Generator name (see `pipesynth list`).", show_default=False)],
    devices: Annotated[int, typer.Option("--devices", "-d", help="Number of devices (pipeline ranks).", min=1)],
    microbatches: Annotated[int, typer.Option("--microbatches", "-m", help="Microbatches per iteration.", min=1)],
    chunks: Annotated[int, typer.Option("--chunks", "-v", help="Stages per device (loop placement).", min=1)] = 2,
    cost: Annotated[str, typer.Option("--cost", "-c", help="Pass costs, e.g. F=3,B=4,W=2 (per stage F=1:1:2).")] = "",
    comm: Annotated[float, typer.Option("--comm", help="Latency of a send between devices.", min=0)] = 0.0,
    activation: Annotated[
        str, typer.Option("--activation", help="Activation per microbatch of each stage (per stage 1:1:2).")
    ] = "1",
    kept_for_w: Annotated[
        str | None, typer.Option("--kept-for-w", help="Part of the activation that W still needs (default: all).")
    ] = None,
    cap: Annotated[
        str | None, typer.Option("--cap", help="Memory cap per device: 6, 6:6:4:4, or 0.5x of 1F1B's peak.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON here, not stdout.")] = None,
) -> None:
    """Generate a schedule with a named generator and write it as JSON.

    Example: pipesynth schedule zb-h1 -d 4 -m 8 --cost F=3,B=4,W=2 -o zb-h1.json
    """
    result = generate(
        name,
        devices,
        microbatches,
        chunks=chunks,
        cost=parse_cost(cost),
        comm=comm,
        activation=parse_numbers(activation, "--activation"),
        kept_for_w=None if kept_for_w is None else parse_numbers(kept_for_w, "--kept-for-w"),
        cap=parse_cap_option(cap),
    )
    violations = find_violations(result)
    if violations:
        raise PipesynthError(f"{name} cannot meet this problem: {violations[0]}")
    if output is None:
        typer.echo(dumps(result), nl=False)
    else:
        save(result, output)
    typer.echo(summary(result) + ("" if output is None else f" -> {output}"), err=True)


@command("list")
def list_generators() -> None:
    """List the schedule generators with their placement and backward mode.

    Example: pipesynth list
    """
    width = max(len(name) for name in GENERATORS)
    typer.echo(f"{'name'.ljust(width)}  placement  backward  summary")
    for gen in GENERATORS.values():
        backward = "split" if gen.split_backward else "fused"
        typer.echo(f"{gen.name.ljust(width)}  {gen.placement.ljust(9)}  {backward.ljust(8)}  {gen.summary}")


@command()
def show(
    file: Annotated[Path, typer.Argument(help="A pipesynth.schedule/1 JSON file.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also draw the chart to this .png or .svg.")] = None,
    width: Annotated[int | None, typer.Option("--width", "-w", help="Columns of the time axis.", min=1)] = None,
    color: Annotated[
        bool | None, typer.Option("--color/--no-color", help="ANSI colors (default: on a terminal).")
    ] = None,
) -> None:
    """Draw a schedule as a Gantt chart in the terminal, and as an image with --out.

    Example: pipesynth show zb-h1.json --out zb-h1.png
    """
    sched = load(file)
    rows = schedule_bars(sched)
    if width is None:
        width = min(natural_width(rows), max(20, shutil.get_terminal_size().columns - 10))
    typer.echo(summary(sched))
    typer.echo(gantt_text(rows, width=width, color=sys.stdout.isatty() if color is None else color))
    if out is not None:
        path = gantt_figure(rows, out, title=summary(sched))
        typer.echo(f"chart written to {path}")
