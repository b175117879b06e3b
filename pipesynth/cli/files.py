"""Commands that read a schedule file: validate, simulate."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipesynth.cli import command
from pipesynth.errors import InvalidScheduleError
from pipesynth.schedule_file import load
from pipesynth.simulate import simulate as run_simulation
from pipesynth.validate import find_violations

FILE = typer.Argument(..., help="A pipesynth.schedule/1 JSON file.", show_default=False)


@command()
def validate(file: Path = FILE) -> None:
    """Check a schedule against every rule; list what is wrong, exit 2 if anything is.

    Example: pipesynth validate schedules/v-half-d4-m8.json
    """
    schedule = load(file)
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
    """Time a schedule with list scheduling and print makespan, bubble rate, peak memory.

    Example: pipesynth simulate schedules/v-half-d4-m8.json --json
    """
    schedule = load(file)
    violations = find_violations(schedule)
    if violations:
        raise InvalidScheduleError(violations)
    sim = run_simulation(schedule)
    figures = {
        "makespan": sim.makespan,
        "bubble_rate": round(sim.bubble_rate, 6),
        "peak_memory": list(sim.peak_memory),
        "busy": sim.busy,
    }
    if as_json:
        typer.echo(json.dumps(figures))
        return
    typer.echo(f"{schedule.name or file}: makespan {sim.makespan:g}, bubble rate {sim.bubble_rate:.4f}")
    for d, (peak, busy) in enumerate(zip(sim.peak_memory, sim.busy)):
        typer.echo(f"  device {d}: busy {busy:g}, peak memory {peak:g}")
