"""Large-neighbourhood search (LNS): improve a whole schedule one time window at a time.

Why: at real depths (D >= 12, thousands of passes) the full model
(`full.py`) is too big for CP-SAT to improve much within a time limit a user
waits, and the starts (handcrafted V schedules, repeated blocks) waste time
where they are rigid: in warm-up and cool-down, and in a steady state built
from one-microbatch blocks. A window of a few hundred passes, with the rest
of the schedule held, is small enough for CP-SAT to solve well, and sliding
it over the schedule reaches every part of it.

One move, on the current schedule timed by list scheduling (docs/design.md
section 2) on the integer-scaled problem (`scaled.py`), for a window
[t0, t1):

- passes that start before t0 keep their times (constants);
- passes that start in the window are free: one no-overlap per device after
  the device's last earlier pass, dependencies with comm, and the device's
  memory as a reservoir that starts at its level after the earlier passes
  (memory changes at pass starts, in list order, as in `full.py`);
- passes after the window keep their device order (precedences only, up to
  `tail` windows further; none of them changes memory, since each device's
  window holds the same passes in another order).

The objective is the makespan of what is modelled (the true makespan when
the tail reaches the end), then the sum of the devices' finishing times as a
tie-break, so moves that finish some devices earlier are taken even when the
makespan does not move yet. The new order is re-timed by the simulator and
kept only when it is better in that order; the result is re-simulated on the
real problem and validated, and returned only when it beats the start. So
LNS never returns a worse or invalid schedule.

Windows sweep the schedule (forwards, then backwards, each sweep shifted),
in turn over every device and over a band of a quarter of the devices (both
arms of the V, so a band holds whole stretches of the pipeline) for a longer
time; they widen when two sweeps in a row find nothing, up to four times, and
the search ends when the widest find nothing. Budgets use `SolverParams.now()`,
so deterministic mode stays deterministic.
"""

from __future__ import annotations

import bisect
import random
import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from pipesynth.core.problem import Problem
from pipesynth.core.rules import PassKey, comm_delay, dependencies, memory_delta
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order
from pipesynth.core.validate import find_violations
from pipesynth.errors import InvalidScheduleError
from pipesynth.solver.progress import Progress, SolverParams, report
from pipesynth.solver.scaled import Scaled

Order = list[list[PassKey]]


@dataclass(frozen=True)
class LnsResult:
    """The best schedule found (the start if nothing better), and how the search went."""

    schedule: Schedule
    improved: bool
    windows: int  # windows solved
    accepted: int  # windows whose result was kept


@dataclass(frozen=True)
class _Timed:
    """An order timed on the integer problem: starts and ends per device, and its score."""

    order: Order
    starts: list[list[int]]
    ends: list[list[int]]
    where: dict[PassKey, tuple[int, int]]  # (device, position) of each pass

    @staticmethod
    def of(problem: Problem, order: Order) -> _Timed | None:
        try:
            timed = from_order(problem, order, "lns")
        except InvalidScheduleError:
            return None
        if problem.cap is not None and any(
            peak > cap + 1e-9 for peak, cap in zip(timed.metrics.peak_memory, problem.cap)
        ):
            return None
        starts = [[round(a.start) for a in dev] for dev in timed.actions]
        ends = [[round(a.end) for a in dev] for dev in timed.actions]
        where = {k: (d, i) for d, keys in enumerate(order) for i, k in enumerate(keys)}
        return _Timed(order, starts, ends, where)

    @property
    def score(self) -> tuple[int, int]:
        """(makespan, sum of the devices' finishing times): smaller is better."""
        finish = [dev[-1] if dev else 0 for dev in self.ends]
        return max(finish), sum(finish)


def improve(
    start: Schedule,
    params: SolverParams,
    time_limit: float,
    lower_bound: float = 0.0,
    progress: Progress | None = None,
    window_passes: int | None = None,
    tail: float = 1.0,
) -> LnsResult:
    """Improve `start` (a valid schedule) by re-solving windows of about `window_passes` passes
    (default: 8 per device, at least 150).

    Stops at `time_limit` (on `params.now()`), when `params.stop` is set, or
    when the makespan meets `lower_bound`.
    """
    mark, wall = params.now(), time.monotonic()
    problem = start.problem
    window_passes = window_passes or max(150, 8 * problem.devices)
    scaled = Scaled.of(problem)
    whole = scaled.integer_problem()
    rng = random.Random(params.seed)
    current = _Timed.of(whole, [[a.key for a in dev] for dev in start.actions])
    if current is None or time_limit <= 0:
        return LnsResult(start, False, 0, 0)
    # Kept for the end: timing and validating the result (seconds at D = 64, m = 256); in
    # deterministic mode the clock is CP-SAT's, which that work does not move.
    reserve = 0.2 if params.deterministic else 0.2 + 3 * (time.monotonic() - wall)
    goal = lower_bound * scaled.time_scale + 1e-6  # done once the makespan meets the bound
    size = window_passes
    windows = accepted = sweep = stale = 0

    def left() -> float:
        return time_limit - (params.now() - mark)

    while left() > reserve and not params.stopped and current.score[0] > goal:
        makespan = current.score[0]
        # Even sweeps free every device in a short window; odd ones a band of
        # adjacent devices (both arms of the V) in a window as many times longer.
        band = problem.devices if sweep % 2 == 0 else max(2, problem.devices // 4)
        width = max(1, round(makespan * size * problem.devices / band / max(1, start.num_actions)))
        shift = rng.randrange(max(1, width // 2))
        lows = list(range(-shift, makespan, max(1, width // 2)))
        if sweep % 4 >= 2:
            lows.reverse()
        found = False
        for t0 in lows:
            if left() <= reserve or params.stopped or current.score[0] <= goal:
                break
            first = rng.randrange(problem.devices - band + 1)
            devices = range(first, first + band)
            t1 = t0 + width
            limit = min(left(), max(1.0, 0.05 * time_limit))
            better = _solve_window(whole, current, devices, max(0, t0), t1, t1 + tail * width, params, limit)
            windows += 1
            if better is not None and better.score < current.score:
                found |= better.score[0] < current.score[0]
                current = better
                accepted += 1
                where = f"devices {first}-{first + band - 1}, " if band < problem.devices else ""
                report(
                    progress,
                    "lns",
                    f"window {where}{max(0, t0) / scaled.time_scale:g}-{t1 / scaled.time_scale:g}",
                    0.0,
                    makespan=current.score[0] / scaled.time_scale,
                )
        sweep += 1
        stale = 0 if found else stale + 1
        if stale >= 2 and size >= 4 * window_passes:
            break  # sweeps of the widest windows, both kinds, found nothing: a local optimum
        if found:
            size = window_passes
        elif stale >= 2:
            size = min(4 * window_passes, round(size * 1.5))
    if not accepted:
        return LnsResult(start, False, windows, accepted)
    final = from_order(problem, current.order, start.name, **start.provenance)
    if find_violations(final) or final.metrics.makespan >= start.metrics.makespan - 1e-9:
        return LnsResult(start, False, windows, accepted)
    return LnsResult(final, True, windows, accepted)


def _solve_window(
    problem: Problem,
    current: _Timed,
    devices: range,
    t0: int,
    t1: int,
    t2: float,
    params: SolverParams,
    time_limit: float,
) -> _Timed | None:
    """The best re-ordering of `devices`' passes starting in [t0, t1), or None if CP-SAT found none."""
    order = current.order
    model = cp_model.CpModel()
    makespan = max(dev[-1] for dev in current.ends if dev)
    start: dict[PassKey, cp_model.IntVar] = {}
    window: list[list[PassKey]] = []
    tail: list[list[PassKey]] = []
    prefix: list[int] = []  # per device, how many passes keep their times
    for d, keys in enumerate(order):
        i0 = bisect.bisect_left(current.starts[d], t0)
        i1 = bisect.bisect_left(current.starts[d], t1)
        i2 = bisect.bisect_left(current.starts[d], t2)
        if d not in devices:
            i1 = i0  # the device keeps its order
        prefix.append(i0)
        window.append(keys[i0:i1])
        tail.append(keys[i1:i2])
    if not any(window):
        return None
    cost = {}
    for d in range(problem.devices):
        for k in (*window[d], *tail[d]):
            cost[k] = round(problem.cost(k[0], k[1]))
            start[k] = model.new_int_var(0, makespan - cost[k], f"s{k}")
    for k, x in start.items():
        for dep in dependencies(problem, *k):
            delay = round(comm_delay(problem, dep[1], k[1]))
            if dep in start:
                model.add(x >= start[dep] + cost[dep] + delay)
            else:  # it kept its time
                dd, i = current.where[dep]
                model.add(x >= current.ends[dd][i] + delay)
    finish, finish_hint = [], []
    for d in range(problem.devices):
        keys, i0 = order[d], prefix[d]
        before = current.ends[d][i0 - 1] if i0 > 0 else 0
        spans = []
        for k in window[d]:
            model.add(start[k] >= before)
            spans.append(model.new_fixed_size_interval_var(start[k], cost[k], f"i{k}"))
        model.add_no_overlap(spans)
        if tail[d]:
            first = start[tail[d][0]]
            for k in window[d]:
                model.add(first >= start[k] + cost[k])
            if not window[d]:
                model.add(first >= before)
            for a, b in zip(tail[d], tail[d][1:]):
                model.add(start[b] >= start[a] + cost[a])
        last = tail[d][-1:] or window[d]
        if last:
            end_d = model.new_int_var(0, makespan, f"finish{d}")
            for k in last:
                model.add(end_d >= start[k] + cost[k])
            finish_hint.append(current.ends[d][i0 + len(window[d]) + len(tail[d]) - 1])
            model.add_hint(end_d, finish_hint[-1])
            finish.append(end_d)
        if problem.cap is not None and window[d]:
            level = sum(round(memory_delta(problem, op, s)) for op, s, _ in keys[:i0])
            changes = [round(memory_delta(problem, op, s)) for op, s, _ in window[d]]
            if any(changes):
                times = [model.new_constant(0), *(start[k] for k in window[d])]
                model.add_reservoir_constraint(times, [level, *changes], 0, round(problem.cap[d]))
    longest = model.new_int_var(0, makespan, "makespan")
    for e in finish:
        model.add(longest >= e)
    model.minimize(longest * (problem.devices * makespan + 1) + sum(finish))
    model.add_hint(longest, max(finish_hint))
    for d, keys in enumerate(order):
        for i, k in enumerate(keys):
            if k in start:
                model.add_hint(start[k], current.starts[d][i])
    solver = params.solver(time_limit)
    solver.parameters.expand_reservoir_constraints = False  # expanded, a window's reservoir is quadratic
    solver.parameters.symmetry_level = 0
    if solver.solve(model) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    new_order, changed = [], False
    for d, keys in enumerate(order):
        i0 = prefix[d]
        moved = sorted(window[d], key=lambda k: (solver.value(start[k]), cost[k], k[0] == "F"))
        changed |= moved != window[d]
        new_order.append([*keys[:i0], *moved, *keys[i0 + len(moved) :]])
    return _Timed.of(problem, new_order) if changed else None  # timing a deep schedule takes a second
