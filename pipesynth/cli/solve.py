"""`pipesynth solve`: the CP-SAT synthesizer on the command line."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from pipesynth.cli import command
from pipesynth.cli.build import summary
from pipesynth.cli.options import parse_cost, parse_numbers
from pipesynth.core.problem import PLACEMENTS, Problem, make_problem, parse_cap
from pipesynth.errors import InfeasibleError, PipesynthError
from pipesynth.formats.schedule_json import dumps, load_problem, save
from pipesynth.solver import ProgressEvent, SolveResult, SolverParams
from pipesynth.solver import solve as run_solver


def parse_placement(text: str) -> str | list[int]:
    """`v`, `loop`, `linear`, or an explicit stage->device list `0,1,2,3,3,2,1,0`."""
    if text in PLACEMENTS:
        return text
    try:
        return [int(x) for x in text.replace(":", ",").split(",")]
    except ValueError:
        known = "|".join(PLACEMENTS)
        raise PipesynthError(f"--placement: cannot read {text!r}; expected {known} or a list like 0,1,1,0") from None


def build_problem(
    problem_file: Path | None,
    devices: int | None,
    microbatches: int | None,
    placement: str,
    chunks: int,
    cost: str,
    comm: float,
    activation: str,
    kept_for_w: str | None,
    fused: bool,
    memory: str | None,
) -> Problem:
    """The problem from a file, or from the flags; `--memory` sets or overrides the cap."""
    if problem_file is not None:
        problem = load_problem(problem_file)
    else:
        if devices is None or microbatches is None:
            raise PipesynthError("give --devices and --microbatches, or --problem FILE")
        problem = make_problem(
            devices,
            microbatches,
            parse_placement(placement),
            chunks=chunks,
            cost=parse_cost(cost),
            comm=comm,
            activation=parse_numbers(activation, "--activation"),
            kept_for_w=None if kept_for_w is None else parse_numbers(kept_for_w, "--kept-for-w"),
            split_backward=not fused,
        )
    if memory is not None:
        problem = problem.with_cap(parse_cap(memory, problem))
    return problem


class _Printer:
    """Progress lines on stderr; new-best lines at most twice a second."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.message == "better schedule" and now - self.last < 0.5:
            return
        self.last = now
        typer.echo(str(event), err=True)


@command()
def solve(
    devices: Annotated[int | None, typer.Option("--devices", "-d", help="Number of devices.", min=1)] = None,
    microbatches: Annotated[int | None, typer.Option("--microbatches", "-m", help="Microbatches.", min=1)] = None,
    placement: Annotated[
        str, typer.Option("--placement", "-p", help="linear, loop, v, or a stage->device list 0,1,1,0.")
    ] = "v",
    chunks: Annotated[int, typer.Option("--chunks", "-v", help="Stages per device (loop placement).", min=1)] = 2,
    cost: Annotated[str, typer.Option("--cost", "-c", help="Pass costs, e.g. F=3,B=4,W=2 (per stage F=1:1:2).")] = "",
    comm: Annotated[float, typer.Option("--comm", help="Latency of a send between devices.", min=0)] = 0.0,
    activation: Annotated[str, typer.Option("--activation", help="Activation per microbatch (per stage 1:1:2).")] = "1",
    kept_for_w: Annotated[str | None, typer.Option("--kept-for-w", help="Part of the activation W needs.")] = None,
    fused: Annotated[bool, typer.Option("--fused/--split", help="Fused backward (no W pass) or split.")] = False,
    memory: Annotated[
        str | None,
        typer.Option("--memory", "--cap", help="Cap per device: 6, 6:6:4:4, 12GiB, or 0.5x of 1F1B's peak."),
    ] = None,
    problem_file: Annotated[
        Path | None, typer.Option("--problem", help="Read the problem (schedule-file `problem` object) from FILE.")
    ] = None,
    time_limit: Annotated[float, typer.Option("--time-limit", "-t", help="Seconds to search.", min=0.1)] = 30.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of CP-SAT.")] = 0,
    workers: Annotated[int, typer.Option("--workers", help="CP-SAT worker threads.", min=1)] = 2,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="One worker, deterministic time: same input, same output.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON here, not stdout.")] = None,
) -> None:
    """Find a fast schedule under a memory cap with CP-SAT, and say how far from optimal it can be.

    Ctrl-C stops the search and writes the best schedule found so far (exit 130).
    Example: pipesynth solve -d 8 -m 32 --placement v --memory 0.5x --cost F=3,B=4,W=2 -t 30 -o out.json
    """
    problem = build_problem(
        problem_file, devices, microbatches, placement, chunks, cost, comm, activation, kept_for_w, fused, memory
    )
    params = SolverParams(workers=workers, seed=seed, deterministic=deterministic)
    outcome: dict[str, SolveResult | BaseException] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = run_solver(problem, time_limit, params=params, progress=None if quiet else _Printer())
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=work, daemon=True).start()
    interrupted = False
    while not done.is_set():
        try:
            time.sleep(0.1)  # not Thread.join: a Ctrl-C inside join can corrupt the thread's state (CPython 3.11)
        except KeyboardInterrupt:
            interrupted = True
            typer.echo("interrupt: stopping the search, keeping the best schedule so far", err=True)
            params.request_stop()
    if "error" in outcome:
        err = outcome["error"]
        if isinstance(err, InfeasibleError):
            typer.echo(str(err), err=True)
            raise typer.Exit(2)
        raise err
    result = outcome["result"]
    if output is None:
        typer.echo(dumps(result.schedule), nl=False)
    else:
        save(result.schedule, output)
    where = "" if output is None else f" -> {output}"
    cp_sat = "-" if result.cp_sat_bound is None else f"{result.cp_sat_bound:g}"
    typer.echo(
        f"{summary(result.schedule)}{where}\n{result.status}: lower bound {result.lower_bound:g}"
        f" ({result.bound_argument}), CP-SAT bound {cp_sat}, gap {100 * result.gap:.2f}%, {result.seconds:.1f} s",
        err=True,
    )
    if interrupted:
        typer.echo("interrupted: this is the best schedule found so far; it is not proven optimal", err=True)
        raise typer.Exit(130)
