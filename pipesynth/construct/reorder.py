"""Turning a repeated pattern into a good full schedule: reordering under a memory cap.

Warm-up and cool-down are where a repeated block leaves idle time: few
microbatches are in flight, so memory is spare. Two ways to use it, both
never letting a device's memory exceed its cap:

- `compact_order`: the paper's reorder. Walk the repeated passes in time
  order and move each one to the earliest idle gap on its device that its
  inputs and (for F) memory allow.
- `greedy_order`: a memory-capped list scheduler. Over all devices, run the
  pass that can start first; tie-breaks, per-stage budgets and patience
  (waiting for an F or B rather than starting a W that would delay it) are
  options, because which of them wins depends on costs and comm.

`shortest` times every candidate order and keeps the shortest.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import (
    PassKey,
    chain_position,
    comm_delay,
    dependencies,
    freeing_pass,
    memory_delta,
    successors,
)
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order
from pipesynth.errors import InfeasibleError

log = logging.getLogger(__name__)

EPS = 1e-9
Order = list[list[PassKey]]
Key = Callable[[Op, int, int], tuple]
Rank = Callable[[Op, int, int], tuple]
PATIENCE = ("", "w", "all")


def greedy_keys(rank: Rank) -> dict[str, Key]:
    """Tie-breaks: which of the passes that can start at once goes first.

    `rank` is the reference order (a block's repeated start times, or the
    microbatch then its position along the pipeline).
    """
    fbw = {"F": 0, "B": 1, "W": 2}
    bfw = {"B": 0, "F": 1, "W": 2}
    return {
        "rank": rank,
        "fbw": lambda op, s, j: (fbw[op], rank(op, s, j)),
        "bfw": lambda op, s, j: (bfw[op], rank(op, s, j)),
        "fbw-oldest": lambda op, s, j: (fbw[op], j, rank(op, s, j)),
        "bfw-oldest": lambda op, s, j: (bfw[op], j, rank(op, s, j)),
    }


def greedy_order(
    problem: Problem,
    cap: Sequence[float],
    key: Key,
    stage_cap: Sequence[int] | None = None,
    patience: str = "",
    warmup_cap: Sequence[int] | None = None,
) -> Order:
    """A memory-capped list schedule, as per-device orders.

    Repeatedly runs, over all devices, the pass that can start first (ties:
    smallest `key`); each (op, stage) runs its microbatches in order. An F
    may run only if its device stays within `cap` while keeping room for one
    microbatch of each of its other stages that holds none (so the oldest
    microbatch can always move on: no memory deadlock) and its stage holds
    fewer microbatches than `stage_cap` (`warmup_cap` until the device's
    first B). `patience`: "w" lets a W wait rather than delay a pending F or
    B; "all" lets any pass run ahead of the best-keyed one only if it ends
    before that one can start. Each device's best candidate is cached and
    recomputed only when something it depends on changes.
    """
    p, m = problem, problem.microbatches
    nxt = {(op, s): 0 for s in range(p.stages) for op in p.ops}
    end: dict[PassKey, float] = {}
    ready: dict[tuple[Op, int], float | None] = {}
    free = [0.0] * p.devices
    level = [0.0] * p.devices
    live = [0] * p.stages  # microbatches holding activation on each stage
    warm = [True] * p.devices  # no B has run on the device yet
    order: Order = [[] for _ in range(p.devices)]
    streams = [[(op, s) for s in p.stages_on(d) for op in p.ops] for d in range(p.devices)]
    last = freeing_pass(p)

    def stream_ready(op: Op, s: int) -> float | None:
        """When the stream's next pass has its inputs, or None if not known yet."""
        j = nxt[(op, s)]
        if j >= m:
            return None
        t = 0.0
        for dep in dependencies(p, op, s, j):
            if dep not in end:
                return None
            t = max(t, end[dep] + comm_delay(p, dep[1], s))
        return t

    def room_for_f(d: int, s: int) -> bool:
        limit = warmup_cap if warm[d] and warmup_cap is not None else stage_cap
        if limit is not None and live[s] >= limit[s]:
            return False
        reserve = sum(p.activation[t] for t in p.stages_on(d) if t != s and live[t] == 0)
        return level[d] + p.activation[s] + reserve <= cap[d] + EPS

    def device_best(d: int) -> tuple | None:
        cands = []
        for op, s in streams[d]:
            r = ready[(op, s)]
            if r is None or (op == "F" and not room_for_f(d, s)):
                continue
            j = nxt[(op, s)]
            cands.append((max(free[d], r), key(op, s, j), (op, s, j)))
        if patience == "w":
            soon = min((c[0] for c in cands if c[2][0] != "W"), default=math.inf)
            cands = [c for c in cands if c[2][0] != "W" or c[0] + p.cost("W", c[2][1]) <= soon + EPS]
        elif patience == "all" and cands:
            top = min(cands, key=lambda c: c[1])
            cands = [c for c in cands if c is top or c[0] + p.cost(c[2][0], c[2][1]) <= top[0] + EPS]
        return min(cands, default=None, key=lambda c: c[:2])

    for op, s in nxt:
        ready[(op, s)] = stream_ready(op, s)
    best = [device_best(d) for d in range(p.devices)]
    for _ in range(m * len(nxt)):
        choices = [(b[:2], d) for d, b in enumerate(best) if b is not None]
        if not choices:
            raise InfeasibleError(f"memory cap {tuple(cap)} leaves no pass able to run")
        d = min(choices)[1]
        start, _key, (op, s, j) = best[d]
        end[(op, s, j)] = free[d] = start + p.cost(op, s)
        nxt[(op, s)] += 1
        level[d] += memory_delta(p, op, s)
        live[s] += 1 if op == "F" else -1 if op == last else 0
        warm[d] = warm[d] and op != "B"
        order[d].append((op, s, j))
        touched = {d}
        ready[(op, s)] = stream_ready(op, s)
        for sop, ss, sj in successors(p, op, s, j):
            if nxt[(sop, ss)] == sj:
                ready[(sop, ss)] = stream_ready(sop, ss)
                touched.add(p.placement[ss])
        for t in touched:
            best[t] = device_best(t)
    return order


@dataclass(frozen=True)
class Variant:
    """One setting of `greedy_order`: tie-break, patience, and which per-stage limits apply.

    `stage_cap` and `warmup` index the candidate lists given to
    `greedy_portfolio` (0: none).
    """

    key: str
    patience: str = ""
    stage_cap: int = 0
    warmup: int = 0

    def __str__(self) -> str:
        wait = self.patience or "none"
        return f"greedy key={self.key} patience={wait} stage_cap#{self.stage_cap} warmup#{self.warmup}"


def greedy_portfolio(
    problem: Problem,
    cap: Sequence[float],
    rank: Rank,
    variants: Iterable[Variant],
    stage_caps: Sequence[Sequence[int] | None] = (None,),
    warmup_caps: Sequence[Sequence[int] | None] = (None,),
) -> Iterator[tuple[str, Order]]:
    """`greedy_order` under each variant, labelled; variants whose limits are absent or too tight are skipped."""
    keys = greedy_keys(rank)
    for v in variants:
        if v.stage_cap >= len(stage_caps) or v.warmup >= len(warmup_caps):
            continue
        try:
            order = greedy_order(problem, cap, keys[v.key], stage_caps[v.stage_cap], v.patience, warmup_caps[v.warmup])
        except InfeasibleError:
            continue
        yield str(v), order


def compact_order(problem: Problem, timed: Sequence[tuple[float, PassKey]], cap: Sequence[float]) -> Order:
    """Move passes of a collision-free timed pattern earlier into idle gaps (the paper's reorder).

    `timed` lists every pass with its start in the repeated pattern (no two
    overlap on a device, inputs end before use, as a valid block's repeats
    give). In start order, each pass moves to the earliest gap on its device
    that fits it after its inputs; an F only as early as keeps the device's
    memory, over the time it moves across, within `cap`.
    """
    p = problem
    timed = sorted(timed, key=lambda tk: (tk[0], tk[1][2], chain_position(p, tk[1][0], tk[1][1])))
    events: list[list[tuple[float, float]]] = [[] for _ in range(p.devices)]  # (start, memory delta)
    for t, (op, s, _j) in timed:
        events[p.placement[s]].append((t, memory_delta(p, op, s)))
    for ev in events:
        ev.sort()
    busy: list[list[tuple[float, float]]] = [[] for _ in range(p.devices)]
    final: dict[PassKey, tuple[float, float]] = {}
    for t, (op, s, j) in timed:
        d, cost = p.placement[s], p.cost(op, s)
        lo = 0.0
        for dep in dependencies(p, op, s, j):
            lo = max(lo, final[dep][1] + comm_delay(p, dep[1], s))
        if op == "F":
            lo = max(lo, memory_floor(events[d], t, p.activation[s], cap[d]))
        g = first_gap(busy[d], lo, cost, t)
        final[(op, s, j)] = (g, g + cost)
        bisect.insort(busy[d], (g, g + cost))
        delta = memory_delta(p, op, s)
        if g < t and delta:
            events[d].remove((t, delta))
            bisect.insort(events[d], (g, delta))
    order: Order = [[] for _ in range(p.devices)]
    for k, _span in sorted(final.items(), key=lambda kv: (kv[1][0], kv[0][2], chain_position(p, kv[0][0], kv[0][1]))):
        order[p.placement[k[1]]].append(k)
    return order


def memory_floor(events: list[tuple[float, float]], t: float, add: float, cap: float) -> float:
    """Earliest time from which adding `add` until `t` keeps the level within `cap`."""
    k = bisect.bisect_left(events, (t - EPS, -math.inf))
    level = sum(delta for _, delta in events[:k])
    floor = t
    while k > 0 and level + add <= cap + EPS:
        floor = events[k - 1][0]
        level -= events[k - 1][1]
        k -= 1
    return -math.inf if k == 0 and level + add <= cap + EPS else floor


def first_gap(busy: list[tuple[float, float]], lo: float, need: float, limit: float) -> float:
    """Start of the first idle gap of length `need` at or after `lo`; `limit` if none before it.

    `busy` is sorted and its spans do not overlap, so the scan starts at the
    span that may cover `lo` (found by bisection: this was quadratic at depth).
    """
    g = lo
    k = bisect.bisect_left(busy, (lo,))
    if k > 0 and busy[k - 1][1] > lo + EPS:
        k -= 1
    for i in range(k, len(busy)):
        a, b = busy[i]
        if b <= g + EPS:
            continue
        if a >= g + need - EPS:
            break
        g = b
        if g > limit:
            return limit
    return min(g, limit)


def shortest(
    problem: Problem,
    candidates: Iterable[tuple[str, Order]],
    name: str,
    cap: Sequence[float] | None = None,
    **provenance,
) -> Schedule:
    """Time every candidate order; the one with the smallest makespan (the first on ties).

    Orders whose peak breaks `cap` (default `problem.cap`) are passed over.
    """
    limit = problem.cap if cap is None else cap
    best: Schedule | None = None
    for label, order in candidates:
        s = from_order(problem, order, name, reorder=label, **provenance)
        over = limit is not None and any(pk > c + EPS for pk, c in zip(s.metrics.peak_memory, limit))
        log.debug("%s: candidate %s, makespan %g%s", name, label, s.metrics.makespan, " (over the cap)" if over else "")
        if over:
            continue
        if best is None or s.metrics.makespan < best.metrics.makespan - EPS:
            best = s
    if best is not None:
        log.debug("%s: %s wins, makespan %g", name, best.provenance.get("reorder"), best.metrics.makespan)
    if best is None:
        caps = "/".join(f"{c:g}" for c in limit) if limit is not None else "none"
        raise InfeasibleError(f"{name}: no order fits the memory cap ({caps} per device)")
    return best
