"""Tiny problems solved to proven optimality by a plain CP-SAT model, independent of pipesynth.solver.

One interval per pass, one no-overlap per device, the dependencies with comm,
one reservoir per device for memory (changes at pass starts: a device runs
one pass at a time, so start order is list order), minimise the makespan. No
FIFO, no hints, no bounds: nothing shared with the code under test. Needs
positive integer costs (then every valid schedule is a solution and every
solution is a valid schedule).
"""

from __future__ import annotations

from ortools.sat.python import cp_model

from pipesynth.core.problem import Problem
from pipesynth.core.rules import comm_delay, dependencies, memory_delta
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order


def optimal_schedule(problem: Problem, deterministic_seconds: float = 20.0) -> Schedule | None:
    """The optimal schedule, re-timed by the simulator, or None if not proven within the limit."""
    p = problem
    keys = [(op, s, j) for op in p.ops for s in range(p.stages) for j in range(p.microbatches)]
    horizon = int(sum(p.cost(op, s) for op, s, _ in keys) + 2 * p.comm * len(keys))
    model = cp_model.CpModel()
    start, end, spans = {}, {}, [[] for _ in range(p.devices)]
    for k in keys:
        cost = int(p.cost(k[0], k[1]))
        start[k] = model.new_int_var(0, horizon, "")
        end[k] = start[k] + cost
        spans[p.placement[k[1]]].append(model.new_fixed_size_interval_var(start[k], cost, ""))
    for d, intervals in enumerate(spans):
        model.add_no_overlap(intervals)
        mine = [k for k in keys if p.placement[k[1]] == d]
        model.add_reservoir_constraint(
            [start[k] for k in mine], [int(memory_delta(p, k[0], k[1])) for k in mine], 0, int(p.cap[d])
        )
    for k in keys:
        for dep in dependencies(p, *k):
            model.add(start[k] >= end[dep] + int(comm_delay(p, dep[1], k[1])))
    makespan = model.new_int_var(0, horizon, "makespan")
    for k in keys:
        model.add(makespan >= end[k])
    model.minimize(makespan)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.max_deterministic_time = deterministic_seconds
    if solver.solve(model) != cp_model.OPTIMAL:
        return None
    order: list[list] = [[] for _ in range(p.devices)]
    for k in sorted(keys, key=lambda k: (solver.value(start[k]), solver.value(end[k]))):
        order[p.placement[k[1]]].append(k)
    schedule = from_order(p, order, "optimal")
    assert schedule.metrics.makespan == solver.objective_value  # list scheduling keeps the optimum
    return schedule
