"""The paper's reorder of a V block, planned on its slot grid and timed with the real costs after.

The official V-Min / V-Half (sail-sg/zero-bubble-pipeline-parallelism,
"Pipeline Parallelism with Controllable Memory") lay out the whole schedule on
the block's grid of unit slots, every pass one slot and no comm, and only
the final per-device order meets the real costs and comm. On that grid:

1. the block's forward and backward passes repeat every 6 slots; weight
   passes, as one kind, fill the first idle slots after backwards;
2. warm-up (until device 0's first chunk-0 backward) and cool-down (from
   the first last forward) are compacted: in slot order, each pass moves to
   the earliest free slot after its inputs that keeps every device within
   the grid's peak memory; the stable phase stays as it is;
3. the weight passes are taken out, the cool-down compacted again with
   weight passes implied in idle slots, and the weight passes put back,
   now per chunk (chunk 1's first when both wait), in the first idle
   slots after their backwards.

A layout with comm-free unit slots can lose to our comm-aware reorders or
beat them (it keeps the stable phase's rhythm exactly), so it is one
candidate of `pipesynth.construct.blocks.unroll`.

On device i a pass is one of the paper's kinds: F / f the forward of chunk
0 (stage i) / chunk 1 (stage 2D-1-i), B / b the backward of chunk 1 /
chunk 0 (B flows down the devices like F, b flows up like f), W / w the
weight pass of chunk 1 / chunk 0 (W alone: either).
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import PassKey
from pipesynth.core.simulate import from_order

SlotTable = dict[str, list[int]]  # one device: kind -> slot of each microbatch's pass, in microbatch order

BLOCK_KINDS = "FfBb"
PERIOD = 6
KIND = {("F", 0): "F", ("F", 1): "f", ("B", 1): "B", ("B", 0): "b", ("W", 1): "W", ("W", 0): "w"}
MEMORY = {"F": 1, "f": 1, "W": -1, "w": -1}
CHUNK_OF_BACKWARD = {"B": "W", "b": "w"}


def kind(problem: Problem, op: Op, stage: int, split: bool = True) -> str:
    """The pass's letter on its device (split=False: any weight pass is W)."""
    letter = KIND[(op, 0 if stage < problem.devices else 1)]
    return "W" if letter == "w" and not split else letter


def stage_of(problem: Problem, device: int, letter: str) -> int:
    """The stage a pass of this kind runs on the device."""
    return device if letter in "Fbw" else 2 * problem.devices - 1 - device


def put_weights(table: SlotTable, split: bool) -> SlotTable:
    """Weight passes in the first idle slots after their backwards (split: per chunk, W before w)."""
    taken = {t: k for k, slots in table.items() for t in slots}
    owed = {"W": 0, "w": 0}
    out: SlotTable = {k: list(v) for k, v in table.items()} | {"W": []} | ({"w": []} if split else {})
    t, end = 0, max(taken)
    while t <= end or owed["W"] or owed["w"]:
        k = taken.get(t)
        if k in CHUNK_OF_BACKWARD:
            owed[CHUNK_OF_BACKWARD[k] if split else "W"] += 1
        elif k is None:
            w = "W" if owed["W"] else "w" if owed["w"] else None
            if w:
                out[w].append(t)
                owed[w] -= 1
        t += 1
    return out


def peak(table: SlotTable) -> int:
    """Most microbatches alive on the device; without weight passes in the table, each idle slot runs one if owed."""
    taken = {t: k for k, slots in table.items() for t in slots}
    implicit = "W" not in table
    level = top = owed = 0
    for t in range(max(taken) + 1):
        k = taken.get(t)
        if k is not None:
            level += MEMORY.get(k, 0)
            owed += k in CHUNK_OF_BACKWARD
        elif implicit and owed:
            level, owed = level - 1, owed - 1
        top = max(top, level)
    return top


def input_slot(tables: list[SlotTable], device: int, k: str, j: int) -> int:
    """The latest slot among the inputs of the j-th pass of kind k on the device (-1: none)."""
    d = len(tables)
    deps = []
    if k in "FB" and device > 0:
        deps.append(tables[device - 1][k][j])
    if k in "fb" and device + 1 < d:
        deps.append(tables[device + 1][k][j])
    if k in "fBb":  # the device's previous kind along the microbatch's chain
        deps.append(tables[device][BLOCK_KINDS[BLOCK_KINDS.index(k) - 1]][j])
    if k == "W":
        deps.append(sorted(tables[device]["B"] + tables[device]["b"])[j])
    if j > 0:
        deps.append(tables[device][k][j - 1])
    return max(deps, default=-1)


def compact(unit: Problem, tables: list[SlotTable], warm_up: bool) -> list[SlotTable]:
    """Steps 2 and 3 of the module doc: move cool-down (and, if `warm_up`, warm-up) passes earlier, then squeeze.

    Passes are visited in slot order; the stable phase never moves. Tables
    without weight passes get them back (one kind) before the squeeze.
    """
    m = len(tables[0]["F"])
    top = max(peak(p) for p in tables)
    tables = [{k: list(v) for k, v in p.items()} for p in tables]
    kinds = [k for k in (*BLOCK_KINDS, "W") if k in tables[0]]
    visits = sorted((t, d, kinds.index(k), j) for d, p in enumerate(tables) for k in kinds for j, t in enumerate(p[k]))
    occupied: list[set[int]] = [set() for _ in tables]
    phase = 0  # 0 warm-up, 1 stable, 2 cool-down
    for t, d, ki, j in visits:
        k = kinds[ki]
        if phase == 0 and k == "b" and d == 0:
            phase = 1
        if phase == 1 or (phase == 0 and not warm_up):
            phase += phase == 1 and k == "F" and j == m - 1
            occupied[d].add(t)
            continue
        for s in range(input_slot(tables, d, k, j) + 1, t):
            if s in occupied[d]:
                continue
            tables[d][k][j] = s
            if (k in "BbW" and "W" in tables[d]) or peak(tables[d]) <= top:
                break  # with weight passes in the table only a forward can raise memory
        else:
            tables[d][k][j] = t
        occupied[d].add(tables[d][k][j])
    return squeeze(unit, tables if "W" in tables[0] else [put_weights(p, split=False) for p in tables])


def table_order(unit: Problem, tables: list[SlotTable]) -> list[list[PassKey]]:
    """Per-device orders of the tables; a lone W runs the oldest backward's weight pass."""
    order = []
    for d, table in enumerate(tables):
        seq = sorted((t, k, j) for k, slots in table.items() for j, t in enumerate(slots))
        pending: deque[PassKey] = deque()
        dev: list[PassKey] = []
        for _t, k, j in seq:
            if k == "W" and "w" not in table:
                dev.append(pending.popleft())
                continue
            op, s = k.upper(), stage_of(unit, d, k)
            dev.append((op, s, j))
            if op == "B":
                pending.append(("W", s, j))
        order.append(dev)
    return order


def squeeze(unit: Problem, tables: list[SlotTable]) -> list[SlotTable]:
    """Every pass as early as its device's order and inputs allow on the unit grid."""
    split = "w" in tables[0]
    timed = from_order(unit, table_order(unit, tables), "squeeze")
    out: list[SlotTable] = []
    for d, dev in enumerate(timed.actions):
        table: SlotTable = {k: [] for k in tables[d]}
        for a in dev:
            table[kind(unit, a.op, a.stage, split)].append(int(round(a.start)))
        out.append(table)
    return out


def slot_grid_order(unit: Problem, offsets: dict[tuple[Op, int], float], microbatches: int) -> list[list[PassKey]]:
    """The official table of the block with these slots (period 6) for `microbatches` microbatches.

    `unit` is the block's problem with one-slot passes and no comm.
    """
    unit = replace(unit, microbatches=microbatches)
    tables: list[SlotTable] = [{} for _ in range(unit.devices)]
    for (op, s), start in offsets.items():
        k = kind(unit, op, s)
        if k in BLOCK_KINDS:
            tables[unit.placement[s]][k] = [int(start) + PERIOD * j for j in range(microbatches)]
    tables = compact(unit, [put_weights(p, split=False) for p in tables], warm_up=True)
    tables = compact(unit, [{k: p[k] for k in BLOCK_KINDS} for p in tables], warm_up=False)
    return table_order(unit, [put_weights({k: p[k] for k in BLOCK_KINDS}, split=True) for p in tables])
