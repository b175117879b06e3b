"""The one-device relaxation: a lower bound that sees how one device must pack its passes.

Keep one device exact and let every other device run any number of passes at
once, with no memory limit. Take any schedule of the problem, made FIFO (which
loses nothing: `grid.py`). What it runs on device d is a solution of this
smaller model:

- d runs one pass at a time, and its memory (docs/design.md's list rule:
  changes at each pass's start, in list order) stays within its cap;
- each pass lies between its head and the makespan minus its tail (`grid`,
  with the cap's rules: valid for every FIFO schedule);
- each (op, stage) of d runs its microbatches in order, and the cap's
  in-flight edges of d hold (both valid for every FIFO schedule);
- within one microbatch, a pass b of d starts at least `lag(a, b)` after a
  pass a of d ends: the longest chain of that microbatch's passes between
  them (each runs somewhere, for at least its cost), with comm.

So the least makespan of the model, and any bound CP-SAT proves on it, is at
most the makespan of every schedule. Where few microbatches fit in flight and
a microbatch waits long between its passes on a device, the device cannot fill
its time, which the ramp and area arguments (`memory_bounds.py`) do not see:
at D = 4, m = 16, cap 4 chunk units, F,B,W = 3,4,2, the last device's model
proves 349 against their 331 (the best schedule known is 368).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from ortools.sat.python import cp_model

from pipesynth.core.problem import Problem
from pipesynth.core.rules import PassId, chain_order, comm_delay, dependencies
from pipesynth.core.schedule import Schedule
from pipesynth.solver.bounds import lower_bound
from pipesynth.solver.full import add_memory
from pipesynth.solver.grid import grid, inflight_edges
from pipesynth.solver.progress import Progress, SolverParams, report
from pipesynth.solver.scaled import Scaled

#: The name `SolveResult.bound_argument` gives this bound.
ARGUMENT = "one device"
#: Above this many passes on one device, CP-SAT proves too little in a time limit to beat the other arguments.
MAX_DEVICE_PASSES = 200
#: Devices are ranked on the problem cut to this many microbatches (a fraction of a second each).
PROBE_MICROBATCHES = 8
#: The probes' share of the time.
PROBE_SHARE = 0.25


@dataclass(frozen=True)
class DeviceBound:
    """The best bound proven, and the device whose model proved it."""

    value: float
    device: int


def device_lags(problem: Problem, device: int) -> dict[tuple[PassId, PassId], float]:
    """(a, b) -> least time from the end of pass a to the start of pass b, both of one microbatch on `device`."""
    order = chain_order(problem)
    mine = [k for k in order if problem.placement[k[1]] == device]
    lags = {}
    for a in mine:
        after: dict[PassId, float] = {}  # least start of each pass after a's end
        for y in order[order.index(a) + 1 :]:
            waits = [
                (0.0 if (op, s) == a else after[(op, s)] + problem.cost(op, s)) + comm_delay(problem, s, y[1])
                for op, s, _ in dependencies(problem, y[0], y[1], 0)
                if (op, s) == a or (op, s) in after
            ]
            if waits:
                after[y] = max(waits)
        lags.update({(a, b): after[b] for b in mine if b in after})
    return lags


def device_model_bound(
    problem: Problem, device: int, params: SolverParams, time_limit: float, known: Schedule | None = None
) -> float | None:
    """What CP-SAT proves on `device`'s relaxation within `time_limit` (None if costs do not scale exactly).

    `known` (a valid schedule of the problem) hints the search and caps the makespan.
    """
    scaled = Scaled.of(problem)
    if not scaled.exact or scaled.cap is None:
        return None
    ts, m = scaled.time_scale, problem.microbatches
    whole = scaled.integer_problem()
    g = grid(whole, inflight=True)
    index = {p: i for i, p in enumerate(g.order)}
    upper = (
        math.ceil(known.metrics.makespan * ts - 1e-9)
        if known is not None
        else round(g.longest_path(whole)) + sum(scaled.c(*k) for k in scaled.passes()) * m
    )
    mine = [(op, s) for s in problem.stages_on(device) for op in problem.ops]
    model = cp_model.CpModel()
    makespan = model.new_int_var(0, upper, "makespan")
    start, end, spans = {}, {}, []
    for op, s in mine:
        c, i = scaled.c(op, s), index[(op, s)]
        for j in range(m):
            head, tail = round(g.heads[j][i]), round(g.tails[j][i])
            x = model.new_int_var(head, max(head, upper - c - tail), f"s{op}{s}_{j}")
            start[(op, s, j)], end[(op, s, j)] = x, x + c
            spans.append(model.new_fixed_size_interval_var(x, c, f"i{op}{s}_{j}"))
            model.add(makespan >= x + c + tail)
            if j > 0:
                model.add(x >= end[(op, s, j - 1)])
    model.add_no_overlap(spans)
    for (a, b), lag in device_lags(whole, device).items():
        for j in range(m):
            model.add(start[(*b, j)] >= end[(*a, j)] + round(lag))
    for e in inflight_edges(whole):
        if whole.placement[e.target] == device:
            for j in range(e.lag, m):
                model.add(start[("F", e.target, j)] >= end[(*e.source, j - e.lag)])
    add_memory(model, scaled, start, end, devices=[device])
    model.minimize(makespan)
    if known is not None:
        for a in known.actions[device]:
            model.add_hint(start[a.key], round(a.start * ts))
    solver = params.solver(time_limit)
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE, cp_model.UNKNOWN):
        return None
    return math.ceil(solver.best_objective_bound - 1e-6) / ts


def one_device_bound(
    problem: Problem,
    params: SolverParams,
    time_limit: float,
    known: Schedule | None = None,
    progress: Progress | None = None,
) -> DeviceBound | None:
    """The best one-device bound within `time_limit`, or None where it cannot help.

    Devices are ranked by their model on the first `PROBE_MICROBATCHES`
    microbatches; when no device's probe beats the other arguments there, the
    full models are not run. With two workers or more the best two devices'
    models run side by side for the time left, half the workers each; with
    one (or `--deterministic`) the best device gets the time left, the next
    ones what it leaves.
    """
    if problem.cap is None or not Scaled.of(problem).exact:
        return None
    per_device = max(len(problem.stages_on(d)) for d in range(problem.devices)) * len(problem.ops)
    if problem.microbatches * per_device > MAX_DEVICE_PASSES:
        return None
    started, mark = time.monotonic(), params.now()

    def left() -> float:
        return time_limit - (params.now() - mark)

    cut = replace(problem, microbatches=min(problem.microbatches, PROBE_MICROBATCHES))
    others = lower_bound(cut).value
    probes = {}
    for d in range(problem.devices):
        if left() <= (1 - PROBE_SHARE) * time_limit or params.stopped:
            return None
        probes[d] = device_model_bound(cut, d, params, PROBE_SHARE * time_limit / problem.devices) or 0.0
    ranked = sorted((d for d in probes if probes[d] > others + 1e-9), key=lambda d: -probes[d])
    if params.deterministic or params.workers < 2 or len(ranked) < 2:
        proven = [(device_model_bound(problem, d, params, left(), known), d) for d in ranked[:1]]
        for d in ranked[1:]:  # what the first leaves, when its model is proven early
            if params.stopped or left() <= 0.05:
                break
            proven.append((device_model_bound(problem, d, params, left(), known), d))
    else:
        # The best two side by side, half the workers each: the best-ranked model is not always the one
        # CP-SAT proves in time (D=4, F,B,W = 1852,1809,934: the last device needs 14 s, the one before 9-12).
        half = params.shared(params.workers // 2)
        with ThreadPoolExecutor(2) as pool:
            runs = [(pool.submit(device_model_bound, problem, d, half, left(), known), d) for d in ranked[:2]]
            proven = [(run.result(), d) for run, d in runs]
    found = [DeviceBound(value, d) for value, d in proven if value is not None]
    for bound in found:
        report(progress, "bound", f"device {bound.device} alone: {bound.value:g}", time.monotonic() - started)
    return max(found, key=lambda b: b.value, default=None)
