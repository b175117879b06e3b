"""CP-SAT schedule synthesis: a problem in, the best schedule found out, with its proof gap.

`solve` runs, within one time limit: the smallest feasible cap check, the
makespan lower bound, every handcrafted schedule that fits, the block search
(unrolled with the building-block machinery), then the full-schedule polish
hinted with the best of those. It never returns anything worse than its best
starting point, and every schedule it returns has been simulated and validated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from pipesynth.blocks import Block, lifespans, unroll
from pipesynth.problem import Problem
from pipesynth.schedule import Schedule
from pipesynth.solver.block import search_block
from pipesynth.solver.bounds import check_cap, makespan_lower_bound, smallest_feasible_cap
from pipesynth.solver.full import polish
from pipesynth.solver.hints import handcrafted
from pipesynth.solver.progress import Progress, ProgressEvent, SolverParams, report
from pipesynth.validate import find_violations

__all__ = ["SolveResult", "solve", "ProgressEvent", "SolverParams", "smallest_feasible_cap", "makespan_lower_bound"]

#: Above this many passes the full model is too big to help in a time limit: the block result stands.
POLISH_MAX_PASSES = 16_000


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

    def elapsed() -> float:
        return time.monotonic() - started

    if progress is not None:
        # Every phase reports time since this call began.
        outer = progress

        def progress(event: ProgressEvent) -> None:
            outer(replace(event, elapsed=elapsed()))

    check_cap(problem)
    bound = makespan_lower_bound(problem)
    candidates = handcrafted(problem)
    for c in candidates:
        report(progress, "hints", f"{c.name}: makespan {c.metrics.makespan:g}", elapsed())
    found = None
    if not params.stopped:
        budget = min(max(0.3 * time_limit, 0.5), 30.0)
        found = search_block(problem, params, budget, progress)
        for block in (found.block, *found.others):
            blocked = unroll(block, problem.microbatches, name="block", cap=problem.cap)
            news = f"T={block.interval:g} unrolled: makespan {blocked.metrics.makespan:g}"
            report(progress, "block", news, elapsed())
            if not find_violations(blocked):
                blocked.provenance["block"] = _block_record(block, found.status if block is found.block else "feasible")
                candidates.append(blocked)
    best = min(candidates, key=lambda s: s.metrics.makespan)
    base, block_record = best.name, best.provenance.get("block")
    report(progress, "hints", f"best start: {base}", elapsed(), makespan=best.metrics.makespan, bound=bound)
    cp_status = None
    left = time_limit - elapsed()
    if not params.stopped and left > 0.5 and best.num_actions <= polish_passes and best.metrics.makespan > bound + 1e-9:
        polished = polish(best, params, left, bound, progress)
        cp_status = polished.status
        bound = max(bound, polished.bound)
        best = polished.schedule
        base = f"{base}+polish" if polished.improved else base
    makespan = best.metrics.makespan
    if makespan <= bound + 1e-9 or cp_status == "optimal":
        status, bound = "optimal", makespan
    else:
        status = "interrupted" if params.stopped else "feasible"
    gap = 0.0 if makespan <= 0 else max(0.0, (makespan - bound) / makespan)
    seconds = round(elapsed(), 3)
    provenance = {
        "method": f"cp-sat ({base})",
        "status": status,
        "lower_bound": _clean(bound),
        "gap": round(gap, 6),
        "seconds": seconds,
    }
    if block_record is not None:
        provenance["block"] = block_record
    schedule = replace(best, name="solved", provenance={"generator": best.provenance.get("generator"), **provenance})
    report(progress, "done", status, elapsed(), makespan=makespan, bound=bound)
    return SolveResult(schedule, status, bound, gap, seconds)


def _clean(x: float) -> float:
    """Bounds from scaled integers: drop float noise."""
    return float(round(x, 9)) if not math.isclose(x, round(x)) else float(round(x))
