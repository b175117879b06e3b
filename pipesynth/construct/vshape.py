"""The V-shape family (docs/design.md section 3): V-Min, V-Half, V-ZB blocks and ZB-V.

Stage s sits on device s for s < D and on device 2D-1-s after (placement
"v"), so device i holds chunk 0 (stage i) and chunk 1 (stage 2D-1-i).

The paper gives its blocks as slots of one pass each (T = 6 slots at equal
costs). For any costs we keep the slot order and let time follow from it:
the slot block is first laid out in slots wide enough for any pass (always
valid), then repeated and squeezed by list scheduling until it reaches its
steady state, and the steady-state timing of one microbatch is the block
(offsets and T). At equal costs this gives back the slots exactly; with
F, B, W costs apart, it is the pattern the paper analyses (V-Half has no
stable-phase bubble when W + 2B >= 2F and W + 2F >= 2B, V-Min has some).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

from pipesynth.construct import register
from pipesynth.construct.blocks import Block, block_violations, live_copies, repeated_order, steady_peak, unroll
from pipesynth.construct.reorder import Variant, greedy_portfolio, shortest
from pipesynth.construct.slotgrid import slot_grid_order
from pipesynth.construct.zbv import zbv_orders
from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import chain_position
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order
from pipesynth.errors import PipesynthError

SLOTS = 6  # passes per device per microbatch: F, B, W of two chunks


def check_v(problem: Problem, name: str) -> int:
    """The number of devices, after checking the problem has the V placement and split backward."""
    d = problem.devices
    expected = tuple(s if s < d else 2 * d - 1 - s for s in range(2 * d))
    if problem.placement != expected:
        raise PipesynthError(f"{name}: needs the V-shape placement (2 stages per device), got {problem.placement}")
    if not problem.split_backward:
        raise PipesynthError(f"{name}: needs a split backward (separate B and W passes)")
    if d < 2:
        raise PipesynthError(f"{name}: needs at least 2 devices, got {d}")
    return d


def v_min_slots(d: int, i: int) -> tuple[int, int, int, int]:
    """Device i's slots for chunk-0 F, chunk-1 F, chunk-1 B, chunk-0 B in V-Min."""
    gap = 2 if d % 3 == 0 else 0
    return i, 2 * d - 1 - i, 2 * d + gap + i, 4 * d + gap - 1 - i


def v_half_slots(d: int, i: int) -> tuple[int, int, int, int]:
    """Device i's slots for chunk-0 F, chunk-1 F, chunk-1 B, chunk-0 B in V-Half."""
    gap = 3 if d % 2 == 0 else 0
    return 2 * i, 3 * d - 2 - i, 3 * d + gap + 2 * i - 1, 6 * d + gap - 2 - i


def slot_offsets(d: int, slots, w_delay: tuple[int, int] = (0, 0)) -> dict[tuple[str, int], int]:
    """Slot of every pass: F and B from `slots`, each W in the first free slot after its B.

    `w_delay` holds W back by whole periods (chunk 0, chunk 1): each period
    keeps one more microbatch of that chunk alive, the memory V-ZB spends.
    """
    offsets: dict[tuple[str, int], int] = {}
    for i in range(d):
        f0, f1, b1, b0 = slots(d, i)
        s0, s1 = i, 2 * d - 1 - i
        offsets.update({("F", s0): f0, ("F", s1): f1, ("B", s1): b1, ("B", s0): b0})
        used = {f0 % SLOTS, f1 % SLOTS, b1 % SLOTS, b0 % SLOTS}
        for stage, b, delay in sorted([(s1, b1, w_delay[1]), (s0, b0, w_delay[0])], key=lambda x: x[1]):
            t = b + 1
            while t % SLOTS in used:
                t += 1
            used.add(t % SLOTS)
            offsets[("W", stage)] = t + SLOTS * delay
    return offsets


def unit_block(problem: Problem, slot: dict[tuple[str, int], int]) -> Block:
    """The slot pattern itself: every pass one time unit, no comm (the paper's picture)."""
    ones = tuple(1.0 for _ in problem.placement)
    unit = replace(problem, cost_f=ones, cost_b=ones, cost_w=ones, comm=0.0)
    return Block(unit, float(SLOTS), {k: float(v) for k, v in slot.items()})


def steady_block(problem: Problem, slot: dict[tuple[str, int], int]) -> Block:
    """The block a slot pattern settles into once repeated and squeezed (see module doc)."""
    unit = max(max(problem.cost_f), max(problem.cost_b), max(problem.cost_w)) + problem.comm or 1.0
    wide = Block(problem, SLOTS * unit, {k: v * unit for k, v in slot.items()})
    copies = max(live_copies(wide))
    m = 4 * copies + 8
    timed = from_order(replace(problem, microbatches=m), repeated_order(wide, m), "steady")
    start = {a.key: a.start for a in timed.all_actions()}
    k = m // 2
    interval = start[("F", 0, k + 1)] - start[("F", 0, k)]
    base = start[("F", 0, k)]
    offsets = {(op, s): start[(op, s, k)] - base for op, s in slot}
    periodic = all(
        math.isclose(start[(op, s, j + 1)] - start[(op, s, j)], interval, abs_tol=1e-9)
        for op, s in slot
        for j in (k - 1, k, k + 1)
    )
    tight = Block(problem, interval, offsets)
    if periodic and interval > 0 and not block_violations(tight):
        return tight
    return wide


BLOCKS = ("v-min", "v-half", "v-zb")


def v_slots(problem: Problem, name: str) -> dict[tuple[str, int], int]:
    """The named paper block's slots (one of BLOCKS)."""
    if name not in BLOCKS:
        raise PipesynthError(f"block: no building block named {name!r}; blocks: {', '.join(BLOCKS)}")
    d = check_v(problem, name)
    if name == "v-min":
        return slot_offsets(d, v_min_slots)
    if name == "v-half":
        return slot_offsets(d, v_half_slots)
    return slot_offsets(d, v_half_slots, v_zb_delay(d))


def v_block(problem: Problem, name: str) -> Block:
    """The named paper block for this problem's costs and comm."""
    return steady_block(problem, v_slots(problem, name))


def v_zb_delay(d: int) -> tuple[int, int]:
    """W delays that bring V-Half's block up to 1F1B's memory (2D chunk units)."""
    spare = 2 * d - 2 * math.floor((d + 2) / 2)
    return spare - spare // 2, spare // 2


def warmup_splits(problem: Problem, cap: tuple[float, ...]) -> list[tuple[int, ...]]:
    """Per-stage limits to try before each device's first B: how its memory is shared by its two chunks.

    Device i can hold cap_i microbatches of its chunks (equal activations
    assumed for the count). Before its first B it must keep room for the
    chunk-1 forwards that reach it: about i+1 of them (the paper's own
    warm-up); we also try one fewer, one more and half.
    """
    d = problem.devices
    splits: list[tuple[int, ...]] = []
    for rule in (-1, 0, 1, "half"):
        limits = [0] * problem.stages
        for i in range(d):
            unit = max(problem.activation[i], problem.activation[2 * d - 1 - i])
            k = max(2, int(cap[i] / unit)) if unit > 0 else problem.microbatches
            c1 = k // 2 if rule == "half" else max(1, min(i + 1 + rule, k // 2))
            limits[i], limits[2 * d - 1 - i] = k - c1, c1
        splits.append(tuple(limits))
    return splits


def unroll_v(problem: Problem, name: str) -> Schedule:
    """Build, repeat, squeeze and reorder the named block for the problem.

    Besides `unroll`'s own candidates, the official implementation's plan of
    the slot pattern (pipesynth.construct.slotgrid) competes.
    """
    slots = v_slots(problem, name)
    block = steady_block(problem, slots)
    cap = problem.cap or steady_peak(block)
    unit = unit_block(problem, slots)
    return unroll(
        block,
        problem.microbatches,
        name=name,
        cap=cap,
        warmup_caps=warmup_splits(problem, cap),
        slot_block=unit,
        extra=[("slot grid", slot_grid_order(unit.problem, unit.offsets, problem.microbatches))],
    )


@register("v-min", "V-shape block at about 1/3 of 1F1B's memory (Qi et al. 2024)", "v")
def v_min(problem: Problem) -> Schedule:
    return unroll_v(problem, "v-min")


@register("v-half", "V-shape block at about 1/2 of 1F1B's memory (Qi et al. 2024)", "v")
def v_half(problem: Problem) -> Schedule:
    return unroll_v(problem, "v-half")


@register("v-zb", "zero-bubble V-shape block at 1F1B's memory (Qi et al. 2024)", "v")
def v_zb(problem: Problem) -> Schedule:
    return unroll_v(problem, "v-zb")


@register("zb-v", "Zero Bubble's V schedule: rounds heuristic or capped greedy, 1F1B's memory by default", "v")
def zb_v(problem: Problem) -> Schedule:
    """No block: the Zero Bubble paper's round-by-round heuristic (pipesynth.construct.zbv) and our
    memory-capped greedy list schedules, under `problem.cap` (default 2D chunk units); the shortest wins.
    """
    d = check_v(problem, "zb-v")
    cap = problem.cap or tuple(d * problem.device_activation(i) for i in range(d))

    def rank(op: Op, s: int, j: int) -> tuple[int, float]:
        """Oldest microbatch first, then the pass's place along the V (forward down, backward up)."""
        return j, chain_position(problem, op, s)

    warmups = (None, *warmup_splits(problem, cap))
    greedy = greedy_portfolio(problem, cap, rank, ZB_V_VARIANTS, (None,), warmups)
    return shortest(problem, itertools.chain(zbv_orders(problem, cap), greedy), "zb-v", cap=cap)


#: The greedy settings zb-v tries (warmup#k: the k-th of `warmup_splits`), chosen as for
#: blocks.UNROLL_VARIANTS.
ZB_V_VARIANTS = (
    Variant("fbw"),
    Variant("fbw", "w", warmup=2),
    Variant("bfw", warmup=1),
    Variant("fbw", "all"),
    Variant("rank", "w", warmup=4),
    Variant("fbw", "w", warmup=3),
)
