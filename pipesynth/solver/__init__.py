"""CP-SAT schedule synthesis: a problem in, the best schedule found out, with its proof gap.

`solve` runs, within one time limit: the smallest feasible cap check, the
makespan lower bound, every handcrafted schedule that fits, the block search
(unrolled with the building-block machinery), the one-device bound where it
may help, the window search on large problems, then the full-schedule polish
hinted with the best of those. It never returns anything worse than its best
starting point, and every schedule it returns has been simulated and validated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from pipesynth.construct.blocks import Block, lifespans
from pipesynth.core.problem import Problem
from pipesynth.core.schedule import Schedule
from pipesynth.solver.background import Background
from pipesynth.solver.block import search_block
from pipesynth.solver.bounds import check_cap, lower_bound, makespan_lower_bound, smallest_feasible_cap
from pipesynth.solver.full import polish
from pipesynth.solver.hints import generator_jobs, reordered, repeated, sequential
from pipesynth.solver.lns import improve
from pipesynth.solver.one_device import ARGUMENT as ONE_DEVICE
from pipesynth.solver.one_device import one_device_bound
from pipesynth.solver.progress import Progress, ProgressEvent, SolverParams, report

__all__ = ["SolveResult", "solve", "ProgressEvent", "SolverParams", "smallest_feasible_cap", "makespan_lower_bound"]

#: Above this many passes the full model is too big to help in a time limit: the block result stands.
POLISH_MAX_PASSES = 16_000
#: From this many passes on, window search (lns.py) gets most of the time left before the polish.
LNS_MIN_PASSES = 1000
#: Its share of that time when the polish runs after it.
LNS_SHARE = 0.8
#: Share of the time left after the starts for the one-device bound, where it may help (one_device.py).
ONE_DEVICE_SHARE = 0.5


@dataclass(frozen=True)
class SolveResult:
    """The schedule and what is known about it.

    status: "optimal" (makespan proven minimal), "feasible" (valid, gap open)
    or "interrupted" (stopped early: valid, not proven).
    """

    schedule: Schedule
    status: str
    lower_bound: float
    gap: float
    seconds: float
    bound_argument: str = ""  # which argument gave lower_bound (bounds.ARGUMENTS, "one device" or "cp-sat")
    cp_sat_bound: float | None = None  # CP-SAT's own bound, when the full model ran

    @property
    def makespan(self) -> float:
        return self.schedule.metrics.makespan


def _block_record(b: Block, status: str) -> dict:
    ops = b.problem.ops
    return {
        "T": b.interval,
        "offsets": {op: [b.offsets[(op, s)] for s in range(b.problem.stages)] for op in ops},
        "lifespans": list(lifespans(b)),
        "status": status,
    }


def solve(
    problem: Problem,
    time_limit: float = 30.0,
    workers: int = 2,
    seed: int = 0,
    deterministic: bool = False,
    progress: Progress | None = None,
    params: SolverParams | None = None,
    polish_passes: int = POLISH_MAX_PASSES,
) -> SolveResult:
    """The best schedule found for `problem` within `time_limit` seconds.

    Raises InfeasibleError when a device's cap is below the smallest feasible
    one. `params` (with its `stop` event) lets a caller interrupt the search;
    then the best schedule so far is returned with status "interrupted".
    """
    started = time.monotonic()
    params = params or SolverParams(workers=workers, seed=seed, deterministic=deterministic)
    mark = params.now()

    def elapsed() -> float:
        return time.monotonic() - started

    if progress is not None:
        # Every phase reports time since this call began.
        outer = progress

        def progress(event: ProgressEvent) -> None:
            outer(replace(event, elapsed=elapsed()))

    check_cap(problem)
    proven = lower_bound(problem)
    bound, argument = proven.value, proven.argument
    will_polish = problem.microbatches * problem.stages * len(problem.ops) <= polish_passes
    # Slow builders run in a child while the block search runs here; they get
    # until `deadline`, the polish (if the model is small enough) the rest.
    # Small problems wait for every hint (seconds at most), so the result is never worse than any of them.
    small = problem.microbatches * problem.stages * len(problem.ops) <= 2000
    deadline = None if small else started + (0.75 if will_polish else 0.9) * time_limit
    generators = Background(generator_jobs(problem), inline=params.deterministic)
    candidates: dict[str, Schedule] = {"sequential": sequential(problem)}

    def offer(label: str, schedule: Schedule | None, block: Block | None = None, status: str = "") -> None:
        if schedule is not None:
            if block is not None:
                schedule.provenance["block"] = _block_record(block, status)
            candidates[label] = schedule
            report(progress, "hints", f"{label}: makespan {schedule.metrics.makespan:g}", elapsed())

    blocks: list[tuple[Block, str]] = []
    if not params.stopped:
        budget = min(max(0.3 * time_limit, 0.5), 30.0)
        found = search_block(problem, params, budget, progress)
        blocks = [(found.block, found.status), *((b, "feasible") for b in found.others if b != found.block)]
    for i, (block, status) in enumerate(blocks):
        if i and params.now() - mark >= time_limit:
            break  # each repeat takes a second at depth: once time is up, the found block's is enough
        offer(f"block T={block.interval:g} repeated", repeated(block, problem), block, status)
    # A reorder takes minutes at depth and shares the cores with the generators: there, only the best block's.
    unrolled = blocks if will_polish else blocks[:1]
    reorders = Background([(reordered, (block, problem)) for block, _ in unrolled], inline=params.deterministic)
    for (block, status), schedule in zip(unrolled, reorders.collect(deadline, params.stop)):
        offer(f"block T={block.interval:g} reordered", schedule, block, status)
    for schedule in generators.collect(deadline, params.stop):
        offer(schedule.name if schedule is not None else "", schedule)
    base = min(candidates, key=lambda label: candidates[label].metrics.makespan)
    best = candidates[base]
    block_record = best.provenance.get("block")
    report(progress, "hints", f"best start: {base}", elapsed(), makespan=best.metrics.makespan, bound=bound)
    cp_bound = None
    left = time_limit - (params.now() - mark)
    if not params.stopped and left > 1.0 and will_polish and best.metrics.makespan > bound + 1e-9:
        relaxed = one_device_bound(problem, params, ONE_DEVICE_SHARE * left, best, progress)
        if relaxed is not None and relaxed.value > bound + 1e-9:
            bound, argument = relaxed.value, ONE_DEVICE
        left = time_limit - (params.now() - mark)
    if (
        not params.stopped
        and left > 0.5
        and best.num_actions >= LNS_MIN_PASSES
        and best.metrics.makespan > bound + 1e-9
    ):
        searched = improve(best, params, LNS_SHARE * left if will_polish else left - 0.2, bound, progress)
        best = searched.schedule
        base = f"{base}+lns" if searched.improved else base
        left = time_limit - (params.now() - mark)
    if not params.stopped and left > 0.5 and best.num_actions <= polish_passes and best.metrics.makespan > bound + 1e-9:
        polished = polish(best, params, left, bound, progress)
        cp_bound = polished.bound
        if cp_bound is not None and cp_bound > bound + 1e-9:
            bound, argument = cp_bound, "cp-sat"
        best = polished.schedule
        base = f"{base}+polish" if polished.improved else base
    makespan = best.metrics.makespan
    if makespan <= bound + 1e-9:
        status, bound = "optimal", makespan
    else:
        status = "interrupted" if params.stopped else "feasible"
    gap = 0.0 if makespan <= 0 else max(0.0, (makespan - bound) / makespan)
    seconds = round(elapsed(), 3)
    provenance = {
        "method": f"cp-sat ({base})",
        "status": status,
        "lower_bound": _clean(bound),
        "bound_argument": argument,
        "cp_sat_bound": None if cp_bound is None else _clean(cp_bound),
        "gap": round(gap, 6),
        "seconds": seconds,
    }
    provenance["starts"] = {label: _clean(c.metrics.makespan) for label, c in candidates.items()}
    if block_record is not None:
        provenance["block"] = block_record
    schedule = replace(best, name="solved", provenance={"generator": best.provenance.get("generator"), **provenance})
    report(progress, "done", status, elapsed(), makespan=makespan, bound=bound)
    return SolveResult(schedule, status, bound, gap, seconds, argument, cp_bound)


def _clean(x: float) -> float:
    """Bounds from scaled integers: drop float noise."""
    return float(round(x, 9)) if not math.isclose(x, round(x)) else float(round(x))
