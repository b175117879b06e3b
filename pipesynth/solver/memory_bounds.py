"""What a device's memory cap costs in time: the ramp and area lower bounds.

Both take a device, the cap and the grid of heads and tails
(`pipesynth.solver.grid`, in a FIFO schedule whose first start is 0 and whose
makespan is C) and return a time no schedule of the problem can beat.
Memory is docs/design.md section 2's list rule: F adds its activation, B
frees `activation - kept_for_w` (all of it when fused) and W the rest, and
the level after every pass is at most the cap.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import accumulate

import numpy as np

from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import PassId
from pipesynth.solver.grid import Grid, freed_parts, heads_and_tails


def memory_ramp(problem: Problem, g: Grid, device: int) -> float:
    """Warm-up and cool-down that the cap leaves idle, around all of the device's work.

    Let P be the device's work and h0 its earliest head.

    Warm-up, up to a time t. The work done in [0, t] is at most U(t) = the
    least of (a) t - h0; (b) the most work one machine can do by t on all
    the device's passes, released at their heads (never idle when one is
    ready: no schedule does more by t); (c) the same on its B's and W's
    alone, plus the F work that fits: the F's that start before t hold at
    most cap + R, R = what the passes ending before t can free. Proof of
    (c): the level after the last F that starts before t counts every F
    that starts before t and only releases by passes earlier in the list,
    which ended before t, hence whose head plus cost is below t. So those
    F's weigh at most cap + R in activation, and their work is at most the
    best fractional knapsack of F's with heads below t.

    Cool-down. Let F* be the last F in the device's list, starting at tau;
    by FIFO it is F of some stage s of microbatch m - 1, so C - tau >= its
    cost + its tail. After F* the device runs only B's and W's of pairs
    (stage, microbatch) whose F ran before; at the level after F* (<= cap)
    such a pair holds its activation if its B is still to run, else
    `kept_for_w`. So that B/W work is at most K, the best fractional
    knapsack with value cost(B) + cost(W) per activation and cost(W) per
    `kept_for_w` (at most m pairs of each kind per stage).

    Together, for t <= tau (true when t is at most the head of some F of
    microbatch m - 1): the work in [t, tau] is at least P - U(t) - cost(F*)
    - (B/W after F*), so C >= tau + cost(F*) + tail(F*) >= t + P - U(t) +
    tail(F*) - K; and always C >= t + P - U(t). Hence C >= t + P - U(t) +
    max(0, least tail of an F of microbatch m - 1 - K). U only jumps up
    when t passes an F's head or a release's earliest end, so those times
    (and h0) are the candidates for t.
    """
    m, cap = problem.microbatches, problem.cap[device]
    index = {p: i for i, p in enumerate(g.order)}
    mine = problem.stages_on(device)
    passes = [(op, s) for s in mine for op in problem.ops]
    heads = {p: sorted(row[index[p]] for row in g.heads) for p in passes}
    work = m * sum(problem.cost(*p) for p in passes)
    items = []
    for s in mine:
        b, w = problem.cost("B", s), problem.cost("W", s) if problem.split_backward else 0.0
        items.append((b + w, problem.activation[s], m))
        if problem.split_backward:
            items.append((w, problem.kept_for_w[s], m))
    cool = max(0.0, min(g.tails[m - 1][index[("F", s)]] for s in mine) - knapsack(items, cap))
    first = min(h[0] for h in heads.values())
    every = Greedy([(h, problem.cost(*p)) for p, hs in heads.items() for h in hs])
    others = Greedy([(h, problem.cost(*p)) for p, hs in heads.items() if p[0] != "F" for h in hs])
    frees = sorted(
        (h + problem.cost(op, s), amount)
        for s in mine
        for op, amount in freed_parts(problem, s)
        for h in heads[(op, s)]
    )
    freed = list(accumulate(a for _e, a in frees))
    ends = [e for e, _a in frees]
    last_f = max(heads[("F", s)][-1] for s in mine)
    best = first + work + cool
    for t in {*ends, *(h for s in mine for h in heads[("F", s)])}:
        if not first < t <= last_f:
            continue
        k = bisect_left(ends, t)
        room = cap + (freed[k - 1] if k else 0.0)
        fs = [(problem.cost("F", s), problem.activation[s], bisect_left(heads[("F", s)], t)) for s in mine]
        done = min(t - first, every.done_by(t), others.done_by(t) + knapsack(fs, room))
        best = max(best, t + work - done + cool)
    return best


class Greedy:
    """One machine running (head, length) jobs in head order, never idle when one is ready.

    No schedule of these jobs does more work by any time t (preemption or not).
    """

    def __init__(self, jobs: list[tuple[float, float]]):
        self.starts: list[float] = []  # busy stretches [start, end)
        self.ends: list[float] = []
        for head, length in sorted(jobs):
            if self.ends and head <= self.ends[-1]:
                self.ends[-1] += length
            else:
                self.starts.append(head)
                self.ends.append(head + length)
        self.before = list(accumulate((e - s for s, e in zip(self.starts, self.ends)), initial=0.0))

    def done_by(self, t: float) -> float:
        i = bisect_right(self.starts, t)  # stretches that began by t
        if i == 0:
            return 0.0
        return self.before[i - 1] + min(t, self.ends[i - 1]) - self.starts[i - 1]


def knapsack(items: list[tuple[float, float, int]], room: float) -> float:
    """Most value of (value, weight, count) items within `room` weight, fractions allowed."""
    total = 0.0
    for value, weight, count in sorted(items, key=lambda x: -x[0] / x[1] if x[1] > 0 else -float("inf")):
        take = count if weight <= 0 else min(count, max(0.0, room) / weight)
        total += value * take
        room -= take * weight
    return total


def memory_area(problem: Problem, g: Grid, device: int) -> float:
    """Least makespan at which the device can hold every activation for its least lifespan (Little's law).

    held(t) = activation of F's started by t minus what B's and W's ended by
    t freed; it is the list level after the last pass started by t (or
    before it, if that pass is a B or W still running), so held(t) <= cap.
    A part of a stage's activation (what its B frees, and what its W frees)
    is held from its F's start to the end of the pass that frees it: at
    least the critical path from that F to that pass (`lifespan`), and only
    inside [head of the F, C - tail of the pass]. So sum(amount x lifespan)
    = integral of held <= g(C) := integral over [0, C] of
    min(cap, amounts whose window contains t). g grows with C, so the bound
    is the least C with g(C) >= the sum, found by bisection.
    """
    cap, m = problem.cap[device], problem.microbatches
    index = {p: i for i, p in enumerate(g.order)}
    parts = [(s, op, amount) for s in problem.stages_on(device) for op, amount in freed_parts(problem, s)]
    if not parts:
        return 0.0
    chain, _ = heads_and_tails(problem)
    need = m * sum(amount * lifespan(chain, problem, s, op) for s, op, amount in parts)
    amounts = np.array([amount for _s, _op, amount in parts for _ in range(m)])
    left = np.array([row[index[("F", s)]] for s, _op, _a in parts for row in g.heads])
    tail = np.array([row[index[(op, s)]] for s, op, _a in parts for row in g.tails])

    def held_area(makespan: float) -> float:
        right = makespan - tail
        inside = right > left
        times = np.concatenate([left[inside], right[inside]])
        deltas = np.concatenate([amounts[inside], -amounts[inside]])
        order = np.argsort(times, kind="stable")
        times, level = times[order], np.cumsum(deltas[order])
        spans = np.diff(times, append=makespan)
        return float(np.sum(np.minimum(level, cap) * np.clip(spans, 0.0, None)))

    hi = max(1.0, float(np.max(left)))
    while held_area(hi) < need:
        hi *= 2
    lo = 0.0
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if held_area(mid) >= need else (mid, hi)
    return hi


def lifespan(heads: dict[PassId, float], problem: Problem, stage: int, op: Op) -> float:
    """Least time from the start of the stage's F to the end of its pass `op`, from one microbatch's heads.

    Every path to that pass from the microbatch's first pass goes through
    the stage's F, so the difference of heads is that least time.
    """
    return heads[(op, stage)] + problem.cost(op, stage) - heads[("F", stage)]
