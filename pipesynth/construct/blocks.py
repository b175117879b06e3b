"""Building blocks (docs/design.md section 3): one microbatch's passes at fixed offsets.

A pipeline schedule in the paper's framework is a block repeated every
interval T, squeezed (idle time removed, each device keeping its order) and
reordered in warm-up and cool-down. The block alone already says how much
memory the schedule needs: stage s keeps ceil(l_s / T) microbatches alive,
where l_s is its lifespan (Eq. 1 of "Pipeline Parallelism with Controllable
Memory").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from pipesynth.construct.reorder import Variant, compact_order, greedy_portfolio, shortest
from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import chain_position, comm_delay, dependencies, freeing_pass
from pipesynth.core.schedule import Action, Schedule
from pipesynth.core.simulate import memory_levels

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
            ready = block.end(dop, ds) + comm_delay(p, ds, s)
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
    last = freeing_pass(p)
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
    return periodic_order(block.problem, block.interval, one_per_period(block), microbatches)


def block_rank(block: Block) -> Callable[[Op, int, int], tuple[float, int, float]]:
    """Sort key of a pass in the repeated block: its start, then microbatch and place in the chain."""
    return periodic_rank(block.problem, block.interval, one_per_period(block))


def one_per_period(block: Block) -> dict[tuple[Op, int, int], float]:
    """The block's offsets keyed (op, stage, 0): a period that holds one microbatch."""
    return {(op, s, 0): o for (op, s), o in block.offsets.items()}


def periodic_rank(
    problem: Problem, interval: float, offsets: dict[tuple[Op, int, int], float]
) -> Callable[[Op, int, int], tuple[float, int, float]]:
    """Sort key of a pass when k microbatches repeat every `interval` (`offsets` keyed (op, stage, r), r < k).

    Microbatch r + n k runs the r-th offsets plus n x interval; equal starts
    (zero costs) go by microbatch, then place in the chain, so every
    dependency comes first.
    """
    k = 1 + max(r for _, _, r in offsets)
    return lambda op, s, j: (offsets[(op, s, j % k)] + (j // k) * interval, j, chain_position(problem, op, s))


def periodic_order(
    problem: Problem, interval: float, offsets: dict[tuple[Op, int, int], float], microbatches: int
) -> list[list[tuple[Op, int, int]]]:
    """Each device's passes by `periodic_rank`: the order of k microbatches repeated every `interval`."""
    rank = periodic_rank(problem, interval, offsets)
    order: list[list[tuple[Op, int, int]]] = [[] for _ in range(problem.devices)]
    for op, s, _ in (key for key in offsets if key[2] == 0):
        for j in range(microbatches):
            order[problem.placement[s]].append((op, s, j))
    return [sorted(dev, key=lambda key: rank(*key)) for dev in order]


def steady_peak(block: Block) -> tuple[float, ...]:
    """Per device: the peak memory of the repeated order once it is in steady state."""
    copies = max(live_copies(block)) + 2
    problem = replace(block.problem, microbatches=copies)
    order = repeated_order(block, copies)
    return tuple(max([0.0, *memory_levels(problem, [Action(*k) for k in dev])]) for dev in order)


def stage_peak(block: Block) -> tuple[int, ...]:
    """Per stage: the most microbatches alive at once in the steady-state repeated order."""
    p = block.problem
    copies = max(live_copies(block)) + 2
    last = freeing_pass(p)
    peak = [0] * p.stages
    for dev in repeated_order(block, copies):
        live = [0] * p.stages
        for op, s, _j in dev:
            live[s] += 1 if op == "F" else -1 if op == last else 0
            peak[s] = max(peak[s], live[s])
    return tuple(peak)


#: Greedy settings `unroll` tries (stage_cap#1: the block's per-stage peaks; warmup#k: the
#: k-th of the caller's warm-up limits). We ran all 150 combinations on the anchor
#: instances and 8 random problems (V-Min, V-Half, V-ZB) and kept the greedy settings
#: among the first ten picks of a set cover of the best makespans (the other two picks
#: are the compactions, always tried), plus the one that wins V-Half at 4 devices with
#: comm 60 (an anchor instance).
UNROLL_VARIANTS = (
    Variant("fbw-oldest"),
    Variant("fbw-oldest", "w", warmup=1),
    Variant("fbw-oldest", "w", warmup=2),
    Variant("fbw-oldest", "all", warmup=2),
    Variant("fbw", stage_cap=1, warmup=1),
    Variant("fbw-oldest", "w", stage_cap=1, warmup=3),
    Variant("fbw", stage_cap=1, warmup=3),
    Variant("bfw-oldest", "w", warmup=4),
    Variant("bfw", "w", stage_cap=1, warmup=3),
)


def timed_repeats(block: Block, microbatches: int) -> list[tuple[float, tuple[Op, int, int]]]:
    """Every pass of every microbatch with its start when the block repeats every T."""
    T = block.interval
    return [(start + j * T, (op, s, j)) for (op, s), start in block.offsets.items() for j in range(microbatches)]


def unroll(
    block: Block,
    microbatches: int,
    name: str = "block",
    cap: Sequence[float] | None = None,
    warmup_caps: Sequence[Sequence[int]] = (),
    slot_block: Block | None = None,
    variants: Sequence[Variant] = UNROLL_VARIANTS,
    extra: Iterable[tuple[str, Sequence[Sequence[tuple[Op, int, int]]]]] = (),
) -> Schedule:
    """Repeat the block for `microbatches` microbatches, squeeze, and reorder.

    Candidates (pipesynth.construct.reorder), the shortest wins: the plain repeated
    order, squeezed by list scheduling; the paper's reorder (`compact_order`)
    of the repeats of `slot_block` (the same pattern with its own costs, e.g.
    the paper's unit slots, reordered there and then timed with the real
    costs as the paper does; default the block itself), and then also of the
    block's own repeats; and memory-capped greedy list schedules with the
    block's order as tie-break (`variants`, which may use the block's
    per-stage peaks and `warmup_caps`: per-stage limits before a device's
    first B); and the caller's own labelled orders (`extra`). No device's memory exceeds `cap` (default: the block's
    steady-state peak, within Eq. 1's bound); InfeasibleError if no candidate
    fits a tighter cap.
    """
    problem = replace(block.problem, microbatches=microbatches)
    limit = tuple(steady_peak(block) if cap is None else cap)
    pattern = slot_block or block
    timed = timed_repeats(pattern, microbatches)
    candidates = itertools.chain(
        [
            ("repeat", repeated_order(block, microbatches)),
            ("compact", compact_order(replace(pattern.problem, microbatches=microbatches), timed, limit)),
        ],
        greedy_portfolio(problem, limit, block_rank(block), variants, (None, stage_peak(block)), (None, *warmup_caps)),
        [("compact tight", compact_order(problem, timed_repeats(block, microbatches), limit))]
        if slot_block is not None
        else [],
        extra,
    )
    return shortest(problem, candidates, name, cap=limit, interval=block.interval)
