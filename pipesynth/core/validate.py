"""Check a schedule against the rules, naming the action at fault.

The dependency graph (data dependencies plus each device's order) is a
networkx DiGraph: a cycle in it is exactly a deadlock, and `find_cycle`
gives the passes that wait on each other. Planned times and metrics stored
in a schedule must be the simulator's (docs/design.md section 5). Every
check is linear in the schedule's actions, and at most `MAX_LISTED`
violations are listed (then how many more), so a schedule missing a
billion passes is answered at once.
"""

from __future__ import annotations

import networkx as nx

from pipesynth.core.rules import PassKey, dependencies
from pipesynth.core.schedule import Action, Schedule
from pipesynth.core.simulate import Simulation, memory_levels, simulate
from pipesynth.errors import InvalidScheduleError

EPS = 1e-9
#: Violations listed one by one; the rest are counted in one more line.
MAX_LISTED = 20


def find_violations(schedule: Schedule) -> list[str]:
    """Every broken rule, as messages like `actions[2][17]: B of stage 5 ...` (at most MAX_LISTED, then a count)."""
    problem = schedule.problem
    violations: list[str] = []
    if len(schedule.actions) != problem.devices:
        return [f"actions: expected one list per device ({problem.devices}), got {len(schedule.actions)}"]

    seen: dict[PassKey, tuple[int, int]] = {}
    for d, dev in enumerate(schedule.actions):
        for pos, a in enumerate(dev):
            where = f"actions[{d}][{pos}]"
            if a.op not in problem.ops:
                violations.append(f"{where}: {a.op} is not a pass of this problem ({', '.join(problem.ops)})")
                continue
            if not (0 <= a.stage < problem.stages and 0 <= a.mb < problem.microbatches):
                violations.append(f"{where}: {a} is out of range")
                continue
            if a.key in seen:
                d0, p0 = seen[a.key]
                violations.append(f"{where}: {a} appears twice (first at actions[{d0}][{p0}])")
                continue
            seen[a.key] = (d, pos)
            placed = problem.placement[a.stage]
            if placed != d:
                violations.append(f"{where}: {a} runs on device {d} but stage {a.stage} is placed on device {placed}")
    violations.extend(_missing(schedule, seen))
    if violations:
        return _listed(violations)

    try:
        simulation = simulate(schedule)  # a linear-time sweep; only a deadlock needs the graph to name its cycle
    except InvalidScheduleError:
        return _listed(["deadlock: " + " -> ".join(find_deadlock(schedule)), *cap_violations(schedule)])
    violations.extend(cap_violations(schedule, simulation.memory))
    violations.extend(planned_violations(simulation))
    return _listed(violations)


def _missing(schedule: Schedule, seen: dict[PassKey, tuple[int, int]]) -> list[str]:
    """The first MAX_LISTED passes no device runs, then how many more: found without enumerating every pass."""
    problem = schedule.problem
    missing = len(problem.ops) * problem.stages * problem.microbatches - len(seen)
    out: list[str] = []
    if missing <= 0:
        return out
    for op in problem.ops:
        for s in range(problem.stages):
            for j in range(problem.microbatches):
                if (op, s, j) not in seen:
                    out.append(f"missing: {Action(op, s, j)} (device {problem.placement[s]}) is never run")
                    if len(out) == min(missing, MAX_LISTED):
                        more = missing - len(out)
                        return out + ([f"missing: and {more} more passes are never run"] if more else [])
    return out


def _listed(violations: list[str]) -> list[str]:
    if len(violations) <= MAX_LISTED + 1:
        return violations
    return violations[:MAX_LISTED] + [f"and {len(violations) - MAX_LISTED} more violations"]


def dependency_graph(schedule: Schedule) -> nx.DiGraph:
    """Nodes are passes; an edge u -> v means u must end before v starts."""
    graph = nx.DiGraph()
    for dev in schedule.actions:
        for a in dev:
            graph.add_node(a.key)
            for dep in dependencies(schedule.problem, a.op, a.stage, a.mb):
                graph.add_edge(dep, a.key, kind="data")
        for prev, nxt in zip(dev, dev[1:]):
            graph.add_edge(prev.key, nxt.key, kind="order")
    return graph


def find_deadlock(schedule: Schedule) -> list[str]:
    """Passes on a wait cycle, with where each sits, or [] if none."""
    graph = dependency_graph(schedule)
    try:
        edges = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return []
    where = {a.key: (d, pos) for d, dev in enumerate(schedule.actions) for pos, a in enumerate(dev)}
    return [f"{Action(*u)} at actions[{where[u][0]}][{where[u][1]}]" for u, _v in edges] + [f"{Action(*edges[0][0])}"]


def cap_violations(schedule: Schedule, memory: list[list[float]] | None = None) -> list[str]:
    """The first pass on each device after which its memory exceeds the cap (`memory`: levels already computed)."""
    problem = schedule.problem
    if problem.cap is None:
        return []
    out = []
    for d, dev in enumerate(schedule.actions):
        levels = memory[d] if memory is not None else memory_levels(problem, dev)
        for pos, level in enumerate(levels):
            if level > problem.cap[d] + EPS:
                out.append(
                    f"actions[{d}][{pos}]: memory on device {d} reaches {level:g} after {dev[pos]},"
                    f" over its cap {problem.cap[d]:g}"
                )
                break
    return out


def planned_violations(simulation: Simulation) -> list[str]:
    """Stored start/end times and metrics that are not what the simulator computes (docs/design.md section 5)."""
    schedule = simulation.schedule
    out = []
    for d, dev in enumerate(schedule.actions):
        for pos, a in enumerate(dev):
            for field, stored, true in (
                ("start", a.start, simulation.start[d][pos]),
                ("end", a.end, simulation.end[d][pos]),
            ):
                if stored is not None and not _close(stored, true):
                    out.append(f"actions[{d}][{pos}].{field}: {stored:g} in the file, {true:g} by the rules ({a})")
    m = schedule.metrics
    if m is None:
        return out
    true = simulation.metrics
    if not _close(m.makespan, true.makespan):
        out.append(f"metrics.makespan: {m.makespan:g} in the file, {true.makespan:g} by the rules")
    if abs(m.bubble_rate - true.bubble_rate) > 1e-6 + EPS:
        out.append(f"metrics.bubble_rate: {m.bubble_rate:g} in the file, {true.bubble_rate:g} by the rules")
    if len(m.peak_memory) != len(true.peak_memory):
        out.append(
            f"metrics.peak_memory: expected {len(true.peak_memory)} values (one per device), got {len(m.peak_memory)}"
        )
    else:
        for d, (stored, peak) in enumerate(zip(m.peak_memory, true.peak_memory)):
            if not _close(stored, peak):
                out.append(f"metrics.peak_memory[{d}]: {stored:g} in the file, {peak:g} by the rules")
    return out


def _close(stored: float, true: float) -> bool:
    return abs(stored - true) <= EPS * max(1.0, abs(true))


def validate(schedule: Schedule) -> None:
    """Raise InvalidScheduleError listing what is wrong; return quietly if valid."""
    violations = find_violations(schedule)
    if violations:
        raise InvalidScheduleError(violations)
