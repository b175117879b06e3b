"""Check a schedule against the rules, naming the action at fault.

The dependency graph (data dependencies plus each device's order) is a
networkx DiGraph: a cycle in it is exactly a deadlock, and `find_cycle`
gives the passes that wait on each other.
"""

from __future__ import annotations

import networkx as nx

from pipesynth.core.rules import PassKey, dependencies
from pipesynth.core.schedule import Action, Schedule
from pipesynth.core.simulate import memory_levels, simulate
from pipesynth.errors import InvalidScheduleError

EPS = 1e-9


def find_violations(schedule: Schedule) -> list[str]:
    """Every broken rule, as messages like `actions[2][17]: B of stage 5 ...`."""
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
    for op in problem.ops:
        for s in range(problem.stages):
            for j in range(problem.microbatches):
                if (op, s, j) not in seen:
                    violations.append(f"missing: {Action(op, s, j)} (device {problem.placement[s]}) is never run")
    if violations:
        return violations

    try:
        simulate(schedule)  # a linear-time sweep; only a deadlock needs the graph to name its cycle
    except InvalidScheduleError:
        violations.append("deadlock: " + " -> ".join(find_deadlock(schedule)))
    violations.extend(cap_violations(schedule))
    return violations


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


def cap_violations(schedule: Schedule) -> list[str]:
    problem = schedule.problem
    if problem.cap is None:
        return []
    out = []
    for d, dev in enumerate(schedule.actions):
        for pos, level in enumerate(memory_levels(problem, dev)):
            if level > problem.cap[d] + EPS:
                out.append(
                    f"actions[{d}][{pos}]: memory on device {d} reaches {level:g} after {dev[pos]},"
                    f" over its cap {problem.cap[d]:g}"
                )
                break
    return out


def validate(schedule: Schedule) -> None:
    """Raise InvalidScheduleError listing what is wrong; return quietly if valid."""
    violations = find_violations(schedule)
    if violations:
        raise InvalidScheduleError(violations)
