"""Schedules with one stage per device and a fused backward: GPipe and 1F1B."""

from __future__ import annotations

from pipesynth.construct import register
from pipesynth.core.problem import Problem
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order


@register("gpipe", "all forwards, then all backwards (Huang et al. 2019)", "linear", split_backward=False)
def gpipe(problem: Problem) -> Schedule:
    m = problem.microbatches
    order = [[("F", d, j) for j in range(m)] + [("B", d, j) for j in range(m)] for d in range(problem.devices)]
    return from_order(problem, order, "gpipe")


@register("1f1b", "one forward, one backward after a warm-up (PipeDream-Flush)", "linear", split_backward=False)
def one_f_one_b(problem: Problem) -> Schedule:
    m, n = problem.microbatches, problem.devices
    order = []
    for d in range(n):
        warmup = min(n - 1 - d, m)
        dev = [("F", d, j) for j in range(warmup)]
        for j in range(m - warmup):
            dev += [("F", d, warmup + j), ("B", d, j)]
        dev += [("B", d, j) for j in range(m - warmup, m)]
        order.append(dev)
    return from_order(problem, order, "1f1b")
