"""Commands that make schedules and compare them: schedule, list, block, pareto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipesynth.analysis.pareto import mark_frontier, pareto_figure, pareto_points, pareto_table, same_model_schedules
from pipesynth.analysis.render import Bar, gantt_figure, gantt_text
from pipesynth.cli import command
from pipesynth.cli.check import summary
from pipesynth.cli.options import parse_cap_option, parse_cost, parse_numbers
from pipesynth.construct import GENERATORS, TORCH_NAMES, generate, problem_for
from pipesynth.construct.blocks import Block, lifespans, memory_bound
from pipesynth.construct.vshape import BLOCKS, v_block
from pipesynth.core.units import format_time, memory_label, time_label
from pipesynth.core.validate import find_violations
from pipesynth.errors import PipesynthError
from pipesynth.formats.files import check_writable
from pipesynth.formats.schedule_json import dumps, save


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
    """Generate a schedule with a named generator, as JSON.

    NAME is ours (`pipesynth list`) or torch's class name (Schedule1F1B, ...).

    Example: pipesynth schedule zb-h1 -d 4 -m 8 --cost F=3,B=4,W=2 -o zb-h1.json
    """
    check_writable(output)
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
    """List the generators, their placement and backward mode.

    Example: pipesynth list
    """
    width = max(len(name) for name in GENERATORS)
    typer.echo(f"{'name'.ljust(width)}  placement  backward  summary")
    for gen in GENERATORS.values():
        backward = "split" if gen.split_backward else "fused"
        typer.echo(f"{gen.name.ljust(width)}  {gen.placement.ljust(9)}  {backward.ljust(8)}  {gen.summary}")
    aliases = ", ".join(f"{theirs} = {ours}" for theirs, ours in TORCH_NAMES.items() if ours in GENERATORS)
    typer.echo(f"torch's names are accepted too: {aliases}")


def block_bars(block: Block) -> list[list[Bar]]:
    """One row per device: every pass of one microbatch at its offset."""
    p = block.problem
    chunk = {s: p.stages_on(p.placement[s]).index(s) for s in range(p.stages)}
    rows: list[list[Bar]] = [[] for _ in range(p.devices)]
    for (op, s), start in sorted(block.offsets.items(), key=lambda kv: kv[1]):
        rows[p.placement[s]].append(Bar(start, start + p.cost(op, s), op, s, 0, chunk[s]))
    return rows


def block_report(block: Block) -> str:
    """T, each stage's lifespan and live copies, each device's Eq. 1 memory bound."""
    units = block.problem.units
    lines = [f"interval T = {format_time(block.interval, units)} {time_label(units)}"]
    lives = ", ".join(f"{s}: {format_time(life, units)}" for s, life in enumerate(lifespans(block)))
    lines.append(f"lifespan per stage ({time_label(units)}): {lives}")
    bound = ", ".join(f"{b:g}" for b in memory_bound(block))
    lines.append(f"memory bound per device (sum of ceil(l/T) x activation, {memory_label(units)}): {bound}")
    return "\n".join(lines)


@command()
def block(
    name: Annotated[str, typer.Argument(help=f"Block name: {', '.join(BLOCKS)}.", show_default=False)],
    devices: Annotated[int, typer.Option("--devices", "-d", help="Number of devices.", min=2)],
    cost: Annotated[str, typer.Option("--cost", "-c", help="Pass costs per stage, e.g. F=3,B=4,W=2.")] = "",
    comm: Annotated[float, typer.Option("--comm", help="Latency of a send between devices.", min=0)] = 0.0,
    out: Annotated[Path | None, typer.Option("--out", help="Also draw the block to this PNG or SVG.")] = None,
) -> None:
    """Draw a building block: T, lifespans, memory bound.

    One microbatch's block (docs/design.md section 3), with its interval T,
    each stage's lifespan and each device's memory bound (Eq. 1).

    Example: pipesynth block v-half --devices 4 --cost F=3,B=4,W=2
    """
    check_writable(out)
    problem = problem_for(name if name in BLOCKS else "v-min", devices, 1, cost=parse_cost(cost), comm=comm)
    blk = v_block(problem, name)
    rows = block_bars(blk)
    typer.echo(gantt_text(rows, units=problem.units))
    typer.echo(block_report(blk))
    if out is not None:
        gantt_figure(rows, out, title=f"{name} block, {devices} devices, T = {blk.interval:g}", units=problem.units)
        typer.echo(f"-> {out}")


@command()
def pareto(
    devices: Annotated[int, typer.Option("--devices", "-d", help="Number of devices.", min=1)],
    microbatches: Annotated[int, typer.Option("--microbatches", "-m", help="Microbatches per iteration.", min=1)],
    cost: Annotated[
        str, typer.Option("--cost", "-c", help="Pass costs of one chunk (a V stage), e.g. F=3,B=4,W=2.")
    ] = "",
    comm: Annotated[float, typer.Option("--comm", help="Latency of a send between devices.", min=0)] = 0.0,
    out: Annotated[Path | None, typer.Option("--out", help="Scatter plot to this PNG or SVG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the points as JSON instead of a table.")] = False,
    solve: Annotated[
        bool, typer.Option("--solve", help="Add pipesynth solve's best makespan at caps 0.3x to 1x (V placement).")
    ] = False,
    solve_time: Annotated[float, typer.Option("--solve-time", help="Seconds per solved cap.", min=0.1)] = 10.0,
) -> None:
    """Peak memory against bubble rate of every schedule.

    The model has 2D chunks of the given costs and 1 chunk unit of activation
    each: a V stage is one chunk, a linear stage two (docs/design.md section 2).
    With --solve, the solver's schedules at a sweep of caps join the table and plot.
    Example: pipesynth pareto --devices 8 --microbatches 32 --cost F=3,B=4,W=2 --out pareto.png
    """
    check_writable(out)
    schedules, skipped = same_model_schedules(devices, microbatches, parse_cost(cost), comm)
    if not schedules:
        raise PipesynthError(f"no schedule family runs this case; {skipped[0]}")
    points = pareto_points(schedules)
    if solve:
        from pipesynth.analysis.pareto import solver_points  # OR-Tools only when asked

        solved, notes = solver_points(devices, microbatches, parse_cost(cost), comm, time_limit=solve_time)
        points, skipped = mark_frontier(points + solved), skipped + notes
    if as_json:
        typer.echo(json.dumps({"points": [p.as_dict() for p in points], "skipped": skipped}, indent=1))
    else:
        typer.echo(pareto_table(points))
        for note in skipped:
            typer.echo(f"skipped {note}", err=True)
    if out is not None:
        title = f"{devices} devices, {microbatches} microbatches" + (f", cost {cost}" if cost else "")
        typer.echo(f"-> {pareto_figure(points, out, title, rescue=solve)}", err=as_json)
