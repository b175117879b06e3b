"""Random valid device orders, for tests that need schedules no generator would write."""

from __future__ import annotations

import random

from pipesynth.core.problem import Problem
from pipesynth.core.rules import PassKey, dependencies


def random_valid_order(problem: Problem, rng: random.Random, frugal: bool = False) -> list[list[PassKey]]:
    """Repeatedly run a random pass whose dependencies have run: never deadlocked.

    `frugal` runs a ready B or W whenever there is one, so memory stays low
    (a tight cap for the schedule, and FIFO broken at random).
    """
    todo = {(op, s, j) for op in problem.ops for s in range(problem.stages) for j in range(problem.microbatches)}
    done: set[PassKey] = set()
    order: list[list[PassKey]] = [[] for _ in range(problem.devices)]
    while todo:
        ready = sorted(k for k in todo if all(d in done for d in dependencies(problem, *k)))
        freeing = [k for k in ready if k[0] != "F"]
        key = rng.choice(freeing if frugal and freeing else ready)
        todo.remove(key)
        done.add(key)
        order[problem.placement[key[1]]].append(key)
    return order
