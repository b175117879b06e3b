"""The Zero Bubble paper's handcrafted schedules (Qi et al., ICLR 2024): ZB-H1 and ZB-H2.

Both split the backward into B (input gradient, on the critical path) and W
(weight gradient, free to move), one stage per device:

- ZB-H1 is 1F1B with one more warm-up forward, whose device `i` defers its
  first `i` W passes to the end. Every device then holds at most D
  microbatches, 1F1B's peak, and the warm-up bubble shrinks to
  (D-1)(F+B-W) (at least the (D-1)F ramp). With m >= D its makespan is
  m(F+B+W) + (D-1)max(F+B-W, F).
- ZB-H2 allows 2D-1 microbatches in flight: device `i` starts with
  2(D-i)-1 forwards, and W passes pile up for the tail, so at equal costs
  every device runs without a gap from its first pass to its last (the
  paper's parallelogram). The order is laid out once on unit time slots
  (B first, then F while under the memory limit, else W), the way the
  paper's figure is drawn, and then timed with the real costs; for
  m >= 2D-1 its makespan is the ramp bound m(F+B+W) + (D-1)F.
"""

from __future__ import annotations

from pipesynth.construct import register
from pipesynth.core.problem import Op, Problem
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order

Order = list[list[tuple[Op, int, int]]]


def zb_h1_order(devices: int, microbatches: int) -> Order:
    """1F1B with D - i warm-up forwards and device i's first i W passes deferred."""
    m = microbatches
    order = []
    for d in range(devices):
        forwards = min(devices - d, m)
        dev: list[tuple[Op, int, int]] = [("F", d, j) for j in range(forwards)]
        for j in range(m):
            dev.append(("B", d, j))
            if j >= d:
                dev.append(("W", d, j - d))
            if forwards < m:
                dev.append(("F", d, forwards))
                forwards += 1
        dev += [("W", d, j) for j in range(max(m - d, 0), m)]
        order.append(dev)
    return order


def unit_slot_order(devices: int, microbatches: int, in_flight: int) -> Order:
    """Orders from laying passes on unit time slots, all devices in lock-step.

    In each slot a device runs its next B if the gradient has arrived, else
    its next F if the forward has arrived and fewer than `in_flight`
    microbatches are held (F done, W not yet), else its oldest pending W.
    """
    m = microbatches
    order: Order = [[] for _ in range(devices)]
    next_f, next_b, next_w = [0] * devices, [0] * devices, [0] * devices
    done: set[tuple[Op, int, int]] = set()
    while any(w < m for w in next_w):
        finished = []
        for d in range(devices):
            f, b, w = next_f[d], next_b[d], next_w[d]
            if b < f and (d == devices - 1 or ("B", d + 1, b) in done):
                op: tuple[Op, int, int] = ("B", d, b)
                next_b[d] += 1
            elif f < m and f - w < in_flight and (d == 0 or ("F", d - 1, f) in done):
                op = ("F", d, f)
                next_f[d] += 1
            elif w < b:
                op = ("W", d, w)
                next_w[d] += 1
            else:
                continue
            order[d].append(op)
            finished.append(op)
        done.update(finished)
    return order


@register("zb-h1", "Zero Bubble ZB-H1: 1F1B's peak memory, W passes fill the cool-down", "linear")
def zb_h1(problem: Problem) -> Schedule:
    return from_order(problem, zb_h1_order(problem.devices, problem.microbatches), "zb-h1")


@register("zb-h2", "Zero Bubble ZB-H2: 2D-1 microbatches in flight, no gap at equal costs", "linear")
def zb_h2(problem: Problem) -> Schedule:
    order = unit_slot_order(problem.devices, problem.microbatches, 2 * problem.devices - 1)
    return from_order(problem, order, "zb-h2")
