"""Building blocks (DESIGN.md section 3): one microbatch's passes at fixed offsets.

A pipeline schedule in the paper's framework is a block repeated every
interval T, squeezed (idle time removed, each device keeping its order) and
reordered in warm-up and cool-down. The block alone already says how much
memory the schedule needs: stage s keeps ceil(l_s / T) microbatches alive,
where l_s is its lifespan (Eq. 1 of "Pipeline Parallelism with Controllable
Memory").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipesynth.problem import Op, Problem
from pipesynth.schedule import Schedule, from_order
from pipesynth.simulate import dependencies

EPS = 1e-9
PassId = tuple[Op, int]  # (op, stage) of one microbatch


@dataclass(frozen=True)
class Block:
    """Start offset of every pass of one microbatch, repeated every `interval`.

    The problem gives placement, costs, comm and memory; its `microbatches`
    does not matter to the block.
    """

    problem: Problem
    interval: float
    offsets: dict[PassId, float]

    def end(self, op: Op, stage: int) -> float:
        return self.offsets[(op, stage)] + self.problem.cost(op, stage)

    def passes_on(self, device: int) -> list[PassId]:
        """The device's passes of one microbatch, by offset."""
        p = self.problem
        mine = [(op, s) for (op, s) in self.offsets if p.placement[s] == device]
        return sorted(mine, key=lambda k: (self.offsets[k], k[1]))


def block_passes(problem: Problem) -> list[PassId]:
    """Every (op, stage) one microbatch runs."""
    return [(op, s) for s in range(problem.stages) for op in problem.ops]


def block_violations(block: Block) -> list[str]:
    """Why the block cannot be repeated every T, as messages; [] if it can."""
    p, T = block.problem, block.interval
    out: list[str] = []
    missing = [k for k in block_passes(p) if k not in block.offsets]
    extra = [k for k in block.offsets if k not in set(block_passes(p))]
    out += [f"offsets: no offset for {op} of stage {s}" for op, s in missing]
    out += [f"offsets: {op} of stage {s} is not a pass of this problem" for op, s in extra]
    if out:
        return out
    if T <= 0:
        return [f"interval: must be positive, got {T:g}"]
    for (op, s), start in block.offsets.items():
        for dop, ds in (k[:2] for k in dependencies(p, op, s, 0)):
            ready = block.end(dop, ds) + (p.comm if p.placement[ds] != p.placement[s] else 0.0)
            if start < ready - EPS:
                out.append(f"{op} of stage {s} starts at {start:g}, before {dop} of stage {ds} is ready at {ready:g}")
    for d in range(p.devices):
        spans = []
        for op, s in block.passes_on(d):
            cost = p.cost(op, s)
            if cost > T + EPS:
                out.append(f"{op} of stage {s} takes {cost:g}, longer than the interval {T:g}")
            if cost > EPS:
                spans.append((block.offsets[(op, s)] % T, cost, f"{op} of stage {s}"))
        spans.sort()
        for (a_start, a_cost, a_name), (b_start, _b_cost, b_name) in zip(spans, spans[1:] + spans[:1]):
            gap = (b_start - a_start) % T if (b_start, b_name) != (a_start, a_name) else T
            if len(spans) > 1 and a_cost > gap + EPS:
                out.append(f"device {d}: {a_name} overlaps {b_name} modulo the interval {T:g}")
    return out


def lifespans(block: Block) -> tuple[float, ...]:
    """Per stage: from the start of F to the end of the pass that frees its activation."""
    p = block.problem
    last = "W" if p.split_backward else "B"
    return tuple(block.end(last, s) - block.offsets[("F", s)] for s in range(p.stages))


def live_copies(block: Block) -> tuple[int, ...]:
    """Per stage: how many microbatches' activations are alive at once, ceil(l_s / T)."""
    return tuple(max(1, math.ceil(life / block.interval - EPS)) for life in lifespans(block))


def memory_bound(block: Block) -> tuple[float, ...]:
    """Per device: sum over its stages of ceil(l_s / T) x activation[s] (Eq. 1)."""
    p = block.problem
    copies = live_copies(block)
    return tuple(sum(copies[s] * p.activation[s] for s in p.stages_on(d)) for d in range(p.devices))


def repeated_order(block: Block, microbatches: int) -> list[list[tuple[Op, int, int]]]:
    """Each device's passes ordered by their start when the block repeats every T."""
    p, T = block.problem, block.interval
    order: list[list[tuple[float, int, tuple[Op, int, int]]]] = [[] for _ in range(p.devices)]
    for (op, s), start in block.offsets.items():
        for j in range(microbatches):
            order[p.placement[s]].append((start + j * T, s, (op, s, j)))
    return [[key for _t, _s, key in sorted(dev)] for dev in order]


def unroll(block: Block, microbatches: int, name: str = "block", cap: tuple[float, ...] | None = None) -> Schedule:
    """Repeat the block for `microbatches` microbatches, squeeze, and time it."""
    from dataclasses import replace

    problem = replace(block.problem, microbatches=microbatches)
    order = repeated_order(block, microbatches)
    return from_order(problem, order, name, interval=block.interval)
