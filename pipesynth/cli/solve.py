"""`pipesynth solve`: the CP-SAT synthesizer on the command line."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from pipesynth.cli import command, emit
from pipesynth.cli.check import summary
from pipesynth.cli.options import parse_cost, parse_numbers
from pipesynth.core.problem import PLACEMENTS, Problem, make_problem, parse_cap
from pipesynth.core.schedule import Schedule
from pipesynth.core.units import format_time
from pipesynth.errors import PipesynthError
from pipesynth.formats.files import check_writable, write_text_atomic
from pipesynth.formats.schedule_json import dumps, load_problem_with_sections
from pipesynth.interrupts import deferred, exit_code_of, signal_name
from pipesynth.plan.plan_file import DeviceMemory, PlanSection, dumps_plan
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
) -> tuple[Problem, PlanSection | None]:
    """The problem from a file, or from the flags; `--memory` sets or overrides the cap.

    A plan file's plan comes back too, unless `--memory` changes the cap it was planned for.
    """
    plan = None
    if problem_file is not None:
        problem, sections = load_problem_with_sections(problem_file)
        plan = sections.get("plan")
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
        if plan is not None:
            typer.echo(
                f"note: {problem_file}'s plan (layer split, memory per GPU) is left out of the output: --memory "
                "changes the cap it was planned for (run pipesynth plan again to plan for another memory)",
                err=True,
            )
            plan = None
    return problem, plan


def with_plan(schedule: Schedule, plan: PlanSection | None) -> str:
    """The schedule file's text; a plan read with the problem is carried over with the new schedule's
    activation peaks and step time (its split and static bytes stay)."""
    if plan is None:
        return dumps(schedule)
    peaks = schedule.metrics.peak_memory
    memory = tuple(DeviceMemory(m.static, peak) for m, peak in zip(plan.memory, peaks))
    return dumps_plan(schedule, replace(plan, memory=memory, step_time_us=schedule.metrics.makespan))


class ProgressPrinter:
    """Progress lines on stderr; new-best lines only when better than the last printed, at most twice a second.

    (CP-SAT's first solution is its hint, the best start already printed: it is not news.)
    """

    def __init__(self) -> None:
        self.last = 0.0
        self.best = math.inf

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.message == "better schedule" and (now - self.last < 0.5 or event.makespan >= self.best - 1e-9):
            return
        self.last = now
        if event.makespan is not None:
            self.best = min(self.best, event.makespan)
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
    seed: Annotated[int, typer.Option("--seed", help="Random seed of CP-SAT.", min=0, max=2**31 - 1)] = 0,
    workers: Annotated[int, typer.Option("--workers", help="CP-SAT worker threads.", min=1, max=1024)] = 2,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="One worker, deterministic time: same input, same output.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON here, not stdout.")] = None,
) -> None:
    """Find a fast schedule under a memory cap (CP-SAT).

    It says how far from optimal the schedule can be (a proven lower bound).

    Ctrl-C (or SIGTERM, SIGHUP) stops the search and writes the best schedule found so far
    (exit 128 + the signal: 130 for Ctrl-C); a second one stops at once.
    Example: pipesynth solve -d 8 -m 32 --placement v --memory 0.5x --cost F=3,B=4,W=2 -t 30 -o out.json
    """
    check_writable(output)
    problem, plan = build_problem(
        problem_file, devices, microbatches, placement, chunks, cost, comm, activation, kept_for_w, fused, memory
    )
    params = SolverParams(workers=workers, seed=seed, deterministic=deterministic)
    outcome: dict[str, SolveResult | BaseException] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = run_solver(
                problem, time_limit, params=params, progress=None if quiet else ProgressPrinter()
            )
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=work, daemon=True).start()
    stop: KeyboardInterrupt | None = None
    while not done.is_set():
        try:
            time.sleep(0.1)  # not Thread.join: a Ctrl-C inside join can corrupt the thread's state (CPython 3.11)
        except KeyboardInterrupt as err:
            if stop is not None:
                raise  # a second signal: stop now, without the schedule
            stop = err
            typer.echo(f"interrupt ({signal_name(err)}): stopping the search, keeping the best so far", err=True)
            params.request_stop()
    with deferred():  # a signal from here on waits until the schedule is saved
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        text = with_plan(result.schedule, plan)
        if output is None:
            emit(text, rescue_as="solved.json")
        else:
            write_text_atomic(output, text, rescue=True)
    where = "" if output is None else f" -> {output}"
    bound = format_time(result.lower_bound, problem.units)
    cp_sat = "-" if result.cp_sat_bound is None else format_time(result.cp_sat_bound, problem.units)
    typer.echo(
        f"{summary(result.schedule)}{where}\n{result.status}: lower bound {bound}"
        f" ({result.bound_argument}), CP-SAT bound {cp_sat}, gap {100 * result.gap:.2f}%, {result.seconds:.1f} s",
        err=True,
    )
    if stop is not None:
        typer.echo("interrupted: this is the best schedule found so far; it is not proven optimal", err=True)
        raise typer.Exit(exit_code_of(stop))
