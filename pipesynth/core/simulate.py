"""Timing and memory of a schedule under the fixed rules of docs/design.md section 2.

Timing is list scheduling: each device runs its list in order, and a pass
starts once its device is free and every dependency has ended (plus `comm`
when the dependency ran on another device). We evaluate it in one
topological sweep (Kahn's algorithm) over data and device-order edges, so a
schedule of 50,000 passes simulates in a fraction of a second; passes left
unvisited mean the orders wait on each other forever (deadlock).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import PassKey, comm_delay, dependencies, memory_delta
from pipesynth.core.schedule import Action, Metrics, Schedule
from pipesynth.errors import InvalidScheduleError
from pipesynth.version import __version__


def memory_levels(problem: Problem, device_actions: list[Action]) -> list[float]:
    """Running activation memory of one device after each of its passes."""
    level = 0.0
    levels = []
    for a in device_actions:
        level += memory_delta(problem, a.op, a.stage)
        levels.append(level)
    return levels


@dataclass(frozen=True)
class Simulation:
    """Start and end of every action, and the per-device figures."""

    schedule: Schedule
    start: list[list[float]]
    end: list[list[float]]
    memory: list[list[float]]

    @property
    def makespan(self) -> float:
        ends = [e for dev in self.end for e in dev]
        starts = [s for dev in self.start for s in dev]
        return max(ends) - min(starts) if ends else 0.0

    @property
    def busy(self) -> list[float]:
        return [sum(e - s for s, e in zip(ss, es)) for ss, es in zip(self.start, self.end)]

    @property
    def bubble_rate(self) -> float:
        span = self.makespan
        if span <= 0:
            return 0.0
        return 1.0 - sum(self.busy) / (self.schedule.problem.devices * span)

    @property
    def peak_memory(self) -> tuple[float, ...]:
        return tuple(max([0.0, *levels]) for levels in self.memory)

    @property
    def metrics(self) -> Metrics:
        return Metrics(
            makespan=self.makespan,
            bubble_rate=round(self.bubble_rate, 6),
            peak_memory=self.peak_memory,
        )

    def timed_schedule(self, provenance: dict[str, Any] | None = None) -> Schedule:
        """The schedule with planned times and metrics filled in."""
        actions = [
            [replace(a, start=s, end=e) for a, s, e in zip(dev, ss, es)]
            for dev, ss, es in zip(self.schedule.actions, self.start, self.end)
        ]
        merged = {"generator": f"pipesynth {__version__}", **self.schedule.provenance, **(provenance or {})}
        return replace(self.schedule, actions=actions, metrics=self.metrics, provenance=merged)


def simulate(schedule: Schedule) -> Simulation:
    """Time a schedule by list scheduling; raise InvalidScheduleError if it cannot run."""
    problem = schedule.problem
    flat: list[Action] = []
    index: dict[PassKey, int] = {}
    for d, dev in enumerate(schedule.actions):
        for pos, a in enumerate(dev):
            if a.key in index:
                raise InvalidScheduleError([f"actions[{d}][{pos}]: {a} appears twice"])
            index[a.key] = len(flat)
            flat.append(a)

    successors: list[list[int]] = [[] for _ in flat]
    waiting = [0] * len(flat)
    for i, a in enumerate(flat):
        for dep in dependencies(problem, a.op, a.stage, a.mb):
            j = index.get(dep)
            if j is None:
                raise InvalidScheduleError([f"{a} needs {Action(*dep)}, which no device runs"])
            successors[j].append(i)
            waiting[i] += 1
    offset = 0
    for dev in schedule.actions:
        for pos in range(1, len(dev)):
            successors[offset + pos - 1].append(offset + pos)
            waiting[offset + pos] += 1
        offset += len(dev)

    start = [0.0] * len(flat)
    end = [0.0] * len(flat)
    ready_at = [0.0] * len(flat)
    queue = deque(i for i, w in enumerate(waiting) if w == 0)
    done = 0
    while queue:
        i = queue.popleft()
        done += 1
        a = flat[i]
        start[i] = ready_at[i]
        end[i] = start[i] + problem.cost(a.op, a.stage)
        for k in successors[i]:
            ready_at[k] = max(ready_at[k], end[i] + comm_delay(problem, a.stage, flat[k].stage))
            waiting[k] -= 1
            if waiting[k] == 0:
                queue.append(k)
    if done < len(flat):
        stuck = next(i for i, w in enumerate(waiting) if w > 0)
        raise InvalidScheduleError([f"deadlock: the device orders wait on each other forever (e.g. at {flat[stuck]})"])

    starts, ends, offset = [], [], 0
    for dev in schedule.actions:
        starts.append(start[offset : offset + len(dev)])
        ends.append(end[offset : offset + len(dev)])
        offset += len(dev)
    memory = [memory_levels(problem, dev) for dev in schedule.actions]
    return Simulation(schedule, starts, ends, memory)


def from_order(problem: Problem, order: list[list[tuple[Op, int, int]]], name: str, **provenance: Any) -> Schedule:
    """A schedule from per-device (op, stage, mb) lists, timed and measured.

    Generators build their orders as plain tuples and finish with this, so
    every generated schedule carries planned times, metrics and provenance.
    """
    plain = Schedule(problem, [[Action(op, s, j) for op, s, j in dev] for dev in order], name=name)
    return simulate(plain).timed_schedule(provenance={"method": name, **provenance})
