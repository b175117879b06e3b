"""Commands that convert schedules to and from other tools' formats: export, import."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from pipesynth.cli import command
from pipesynth.cli.options import parse_cost, parse_numbers
from pipesynth.formats.files import check_writable, write_text_atomic
from pipesynth.formats.schedule_json import dumps, load
from pipesynth.formats.torch_csv import (
    load_torch_csv,
    placement_json,
    placement_path,
    to_torch_csv,
    torchtitan_settings,
)


class ExportFormat(str, Enum):
    torch_csv = "torch-csv"


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_text_atomic(output, text)


SCHEDULE = typer.Argument(..., help="A pipesynth.schedule/1 JSON file.", show_default=False)
CSV = typer.Argument(..., help="A compute-only torch-csv schedule (one row per rank).", show_default=False)
TO = typer.Option(..., "--to", help="Target format.")
OUTPUT = typer.Option(None, "-o", "--output", help="Write here instead of stdout.")
COST = typer.Option(None, "--cost", help="Pass costs, e.g. F=3,B=4,W=2 (default 1 each).")
COMM = typer.Option(0.0, "--comm", help="P2P latency between devices.")
ACTIVATION = typer.Option("1", "--activation", help="Activation per microbatch: a number, or 1:1:2 per stage.")
NAME = typer.Option(None, "--name", help="Schedule name (default: the CSV file's stem).")


@command()
def export(file: Path = SCHEDULE, to: ExportFormat = TO, output: Path | None = OUTPUT) -> None:
    """Write a schedule as torch's compute-only CSV.

    torch-csv is the CSV that torch.distributed.pipelining's
    _PipelineScheduleRuntime._load_csv reads. With -o, the stage placement it
    assumes goes next to it (x.placement.json); the torchtitan settings it
    needs are printed (on stderr when the CSV goes to stdout).

    Example: pipesynth export schedules/zb-h1-d4-m8.json --to torch-csv -o zb-h1.csv
    """
    check_writable(output)
    schedule = load(file)
    _write(to_torch_csv(schedule), output)
    if output is not None:
        write_text_atomic(placement_path(output), placement_json(schedule))
        typer.echo(f"wrote {output} and its stage placement {placement_path(output)}")
    typer.echo("torchtitan settings for this CSV:", err=output is None)
    for line in torchtitan_settings(schedule, str(output or "<the CSV file>")):
        typer.echo(f"  {line}", err=output is None)


@command("import")
def import_(
    file: Path = CSV,
    output: Path | None = OUTPUT,
    cost: str | None = COST,
    comm: float = COMM,
    activation: str = ACTIVATION,
    name: str | None = NAME,
) -> None:
    """Read torch's compute-only CSV into a schedule file.

    Stage placement from the rank holding each stage, split backward if any
    I/W cell; costs as for the generators (B and W fused for B cells).

    Example: pipesynth import zb-h1.csv -o zb-h1.json --cost F=1,B=1,W=1
    """
    check_writable(output)
    schedule = load_torch_csv(
        file,
        name=name or file.stem,
        cost=parse_cost(cost),
        comm=comm,
        activation=parse_numbers(activation, "--activation"),
    )
    _write(dumps(schedule), output)
