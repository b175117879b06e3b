"""Greedy modulo scheduling: a quick block at a given interval, to seed CP-SAT.

Passes are placed in dependency order at the earliest start whose residue
modulo T is free on their device (the "modulo reservation table" of software
pipelining). Each W goes right after its B, which keeps lifespans short. The
block's exact periodic memory (same rule as the CP-SAT model) is checked
afterwards; scanning T upward gives the first interval where it fits.
"""

from __future__ import annotations

from pipesynth.core.rules import PassId, chain_order, releasing_passes
from pipesynth.solver.scaled import Scaled


def _free(table: list[tuple[int, int]], start: int, cost: int, T: int) -> bool:
    r = start % T
    # two arcs of a circle of length T overlap iff either starts inside the other
    return not any((r0 - r) % T < cost or (r - r0) % T < c0 for r0, c0 in table)


def greedy_block(scaled: Scaled, T: int) -> dict[PassId, int] | None:
    """Offsets of a block repeatable every T, or None if a pass finds no free window."""
    p = scaled.problem
    deps: dict[PassId, list[tuple[PassId, int]]] = {}
    for a, b, delay in scaled.edges():
        deps.setdefault(b, []).append((a, delay))
    tables: list[list[tuple[int, int]]] = [[] for _ in range(p.devices)]
    off: dict[PassId, int] = {}
    for k in chain_order(p):
        c = scaled.c(*k)
        if c > T:
            return None
        ready = max((off[a] + scaled.c(*a) + delay for a, delay in deps.get(k, [])), default=0)
        table = tables[p.placement[k[1]]]
        if c == 0:
            off[k] = ready
            continue
        candidates = sorted({ready, *(ready + (r0 + c0 - ready) % T for r0, c0 in table)})
        start = next((t for t in candidates if _free(table, t, c, T)), None)
        if start is None:
            return None
        off[k] = start
        table.append((start % T, c))
    return off


def periodic_peak(scaled: Scaled, T: int, off: dict[PassId, int]) -> list[int]:
    """Exact steady-state memory per device after its worst F (see block.py)."""
    p = scaled.problem
    releases = releasing_passes(p)
    peaks = []
    for d in range(p.devices):
        mine = p.stages_on(d)
        worst = 0
        for f in mine:
            level = 0
            for s in mine:
                phase = (off[("F", f)] - off[("F", s)]) % T
                for op in releases:
                    life = off[(op, s)] + scaled.c(op, s) - off[("F", s)]
                    level += scaled.release(op, s) * (life // T + (phase < life % T))
            worst = max(worst, level)
        peaks.append(worst)
    return peaks


def first_greedy_block(scaled: Scaled, lo: int, hi: int, steps: int = 400) -> tuple[int, dict[PassId, int]] | None:
    """The smallest T in [lo, hi] (scanned in at most `steps` steps) whose greedy block fits the cap."""
    step = max(1, (hi - lo) // steps)
    for T in range(lo, hi + 1, step):
        off = greedy_block(scaled, T)
        if off is None:
            continue
        if scaled.cap is None or all(m <= c for m, c in zip(periodic_peak(scaled, T, off), scaled.cap)):
            return T, off
    return None
