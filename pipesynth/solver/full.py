"""Full-schedule polish: every pass of every microbatch in one CP-SAT model.

An interval per pass, one no-overlap per device, dependencies with comm,
first-in-first-out per (stage, pass) over microbatches (they are identical,
so this loses nothing and breaks symmetry: docs/design.md section 4, "Lower
bounds"), the makespan lower bound as a constraint, and the memory cap exact
under docs/design.md's list-order rule: memory changes at each pass's start
(a device runs one pass at a time, so start order is list order), as a
reservoir per device, or as precedences (F of microbatch j+n after the
release of j) when a device holds one stage whose activation one pass frees.

Redundant, and valid for every FIFO schedule, so they cut nothing: each
start lies between its head and the hint's makespan minus its tail (the
bounds' grid, with the cap's rules), and the cap's in-flight edges are
precedences. They let CP-SAT prove what the bounds nearly prove.

The solver's timing may leave gaps; the result is the per-device order,
re-timed by the simulator (list scheduling never starts later), validated,
and kept only if it beats the hint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from pipesynth.core.rules import PassKey
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order
from pipesynth.core.validate import find_violations
from pipesynth.solver.grid import grid, inflight_edges
from pipesynth.solver.progress import Progress, SolverParams, report
from pipesynth.solver.scaled import Scaled


@dataclass(frozen=True)
class PolishResult:
    """The polished schedule (or the hint, if nothing better), with what CP-SAT proved."""

    schedule: Schedule
    status: str  # CP-SAT's: "optimal", "feasible", "unknown", "infeasible"
    bound: float | None  # CP-SAT's best bound on the makespan, in real units (None if none, or costs were rounded)
    improved: bool


class _Watch(cp_model.CpSolverSolutionCallback):
    """Reports each better schedule and stops the search when asked."""

    def __init__(self, scale: int, params: SolverParams, progress: Progress | None, started: float):
        super().__init__()
        self.scale, self.params, self.progress, self.started = scale, params, progress, started

    def on_solution_callback(self) -> None:
        report(
            self.progress,
            "polish",
            "better schedule",
            time.monotonic() - self.started,
            makespan=self.objective_value / self.scale,
            bound=self.best_objective_bound / self.scale,
        )
        if self.params.stopped:
            self.stop_search()


def polish(
    hint: Schedule,
    params: SolverParams,
    time_limit: float,
    lower_bound: float = 0.0,
    progress: Progress | None = None,
    relative_gap: float = 0.0,
) -> PolishResult:
    """Improve `hint` (a valid schedule of the problem) within `time_limit` seconds."""
    started, mark = time.monotonic(), params.now()
    problem = hint.problem
    scaled = Scaled.of(problem)
    ts = scaled.time_scale
    m = problem.microbatches
    whole = scaled.integer_problem()
    g = grid(whole, inflight=True)
    index = {p: i for i, p in enumerate(g.order)}
    upper = math.ceil(hint.metrics.makespan * ts - 1e-9)
    model = cp_model.CpModel()
    start, end, spans = {}, {}, [[] for _ in range(problem.devices)]
    for op, s in scaled.passes():
        c, i = scaled.c(op, s), index[(op, s)]
        for j in range(m):
            head, tail = round(g.heads[j][i]), round(g.tails[j][i])
            x = model.new_int_var(head, max(head, upper - c - tail), f"s{op}{s}_{j}")
            start[(op, s, j)] = x
            end[(op, s, j)] = x + c
            spans[problem.placement[s]].append(model.new_fixed_size_interval_var(x, c, f"i{op}{s}_{j}"))
            if j > 0:
                model.add(x >= end[(op, s, j - 1)])
    for spans_d in spans:
        model.add_no_overlap(spans_d)
    for a, b, delay in scaled.edges():
        for j in range(m):
            model.add(start[(*b, j)] >= end[(*a, j)] + delay)
    for e in inflight_edges(whole):
        for j in range(e.lag, m):
            model.add(start[("F", e.target, j)] >= end[(*e.source, j - e.lag)])
    if scaled.cap is not None:
        add_memory(model, scaled, start, end)
    makespan = model.new_int_var(0, upper, "makespan")
    for (_op, _s, j), e in end.items():
        if j == m - 1:
            model.add(makespan >= e)
    model.add(makespan >= math.ceil(lower_bound * ts - 1e-6))
    model.minimize(makespan)
    for dev in hint.actions:
        for a in dev:
            model.add_hint(start[a.key], round(a.start * ts))
    model.add_hint(makespan, upper)

    solver = params.solver(max(0.05, time_limit - (params.now() - mark)))
    prm = solver.parameters
    prm.relative_gap_limit = relative_gap
    prm.expand_reservoir_constraints = False
    # Presolve of many equal-length passes (no-overlap turned into all-different,
    # then expanded) can take the whole time limit; the hint matters more.
    prm.symmetry_level = 0
    prm.max_presolve_iterations = 1
    prm.cp_model_probing_level = 0
    report(progress, "polish", f"{len(start)} passes, hint {hint.metrics.makespan:g}", time.monotonic() - started)
    status = solver.solve(model, _Watch(ts, params, progress, started))
    name = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible", cp_model.INFEASIBLE: "infeasible"}.get(
        status, "unknown"
    )
    bound = solver.best_objective_bound / ts if name in ("optimal", "feasible") and scaled.exact else None
    if name not in ("optimal", "feasible"):
        return PolishResult(hint, name, bound, False)
    times = {k: (solver.value(v), solver.value(end[k])) for k, v in start.items()}
    candidate = schedule_from_times(hint, times)
    if candidate is None or candidate.metrics.makespan >= hint.metrics.makespan - 1e-9:
        return PolishResult(hint, name, bound, False)
    return PolishResult(candidate, name, bound, True)


def add_memory(model: cp_model.CpModel, scaled: Scaled, start, end, devices: list[int] | None = None) -> None:
    """Each device's (or each of `devices`') running memory, changed at pass starts, stays within its cap."""
    p = scaled.problem
    m = p.microbatches
    for d in range(p.devices) if devices is None else devices:
        mine = p.stages_on(d)
        releasing = [op for op in p.ops if op != "F" and scaled.release(op, mine[0]) > 0]
        cap = scaled.cap[d]
        if len(mine) == 1 and len(releasing) == 1:
            s, op = mine[0], releasing[0]
            room = cap // scaled.activation[s] if scaled.activation[s] > 0 else m
            for j in range(room, m):
                model.add(start[("F", s, j)] >= end[(op, s, j - room)])
            continue
        times, changes = [], []
        for s in mine:
            for j in range(m):
                times.append(start[("F", s, j)])
                changes.append(scaled.activation[s])
                for op in p.ops:
                    if op != "F" and scaled.release(op, s) > 0:
                        times.append(start[(op, s, j)])
                        changes.append(-scaled.release(op, s))
        if any(changes):
            model.add_reservoir_constraint(times, changes, 0, cap)


def schedule_from_times(hint: Schedule, times: dict[PassKey, tuple[int, int]]) -> Schedule | None:
    """Per-device orders by start (at equal starts, the pass that ends first), simulated and validated."""
    problem = hint.problem
    order: list[list[PassKey]] = [[] for _ in range(problem.devices)]
    for key in sorted(times, key=lambda k: (times[k][0], times[k][1], k[0] == "F")):
        order[problem.placement[key[1]]].append(key)
    candidate = from_order(problem, order, hint.name)
    return None if find_violations(candidate) else candidate
