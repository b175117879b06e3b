"""Earliest starts and least tails of every pass of every microbatch, valid for every schedule.

**FIFO loses nothing.** Microbatches are identical, so any schedule can be
relabelled so that every (op, stage) runs its microbatches in order: give the
k-th occurrence of (op, stage) in its device's list the label k. Times do not
change. A pass with one dependency still waits for it (before the k-th F of
stage s+1 starts, the F's of stage s of the k microbatches run so far have
ended, so the k-th one has), a B waits for the k-th of each of its two, and
memory, counted over each list's sequence of (op, stage), is unchanged. So
whatever is proved of FIFO schedules below holds for all schedules.

**The grid.** Put the first start at time 0 (it is the first F of stage 0:
every pass waits for its microbatch's). For pass p of microbatch j, `heads[j]`
holds a time before which it cannot start and `tails[j]` a time that must
remain after it ends; both are longest paths in a DAG whose edges are
"a ends before b starts" (plus a delay):

- one microbatch's dependencies, with comm between devices;
- FIFO: (op, s, j-1) before (op, s, j);
- with a cap, `inflight_edges` (between microbatches j - lag and j) and the
  two memory rules of `MemoryRules`, which raise an F's head and a B's tail
  from the heads (tails) already known of earlier (later) microbatches;
- same-device sets (`device_sets`): all passes of a device that must end
  before p starts run one at a time, each no earlier than its head, so p
  starts no earlier than the least time one machine can finish them (release
  dates in order, Jackson); the mirror image for tails.

Every rule only looks at earlier microbatches (or earlier passes of the same
one) for heads and later ones for tails, so one sweep each way computes the
grid in O(m x passes x rules): no recursion, any depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipesynth.core.problem import Problem
from pipesynth.core.rules import PassId, chain_order, comm_delay, dependencies, release, successors

#: Whole microbatches counted from float memory: a count is rounded up near integers, never too small.
EPS = 1e-9
#: How many microbatches back (or ahead) a same-device set looks.
WINDOW = 2


def heads_and_tails(problem: Problem) -> tuple[dict[PassId, float], dict[PassId, float]]:
    """One microbatch alone: earliest start of each pass, and the least time left after it ends.

    One sweep each way along the chain order (a topological order of one
    microbatch's passes), so it runs in linear time at any depth.
    """
    order = chain_order(problem)
    head: dict[PassId, float] = {}
    for op, s in order:
        deps = dependencies(problem, op, s, 0)
        head[(op, s)] = max(
            (head[(d, ds)] + problem.cost(d, ds) + comm_delay(problem, ds, s) for d, ds, _ in deps), default=0.0
        )
    tail: dict[PassId, float] = {}
    for op, s in reversed(order):
        after = successors(problem, op, s, 0)
        tail[(op, s)] = max(
            (comm_delay(problem, s, n) + problem.cost(nop, n) + tail[(nop, n)] for nop, n, _ in after), default=0.0
        )
    return head, tail


@dataclass(frozen=True)
class InflightEdge:
    """The pass `source` of microbatch j - lag ends before F of stage `target` of microbatch j starts."""

    source: PassId
    target: int
    lag: int


def stage_prefix(problem: Problem, device: int) -> dict[int, float]:
    """A(s): one microbatch's activation on the device's stages up to s (the F's of a microbatch run in stage order)."""
    mine = problem.stages_on(device)
    return {s: sum(problem.activation[t] for t in mine if t <= s) for s in mine}


def freed_parts(problem: Problem, stage: int) -> list[tuple[str, float]]:
    """(pass, amount) for each pass that frees part of the stage's activation."""
    ops = ("B", "W") if problem.split_backward else ("B",)
    return [(op, release(problem, op, stage)) for op in ops if release(problem, op, stage) > 0]


def inflight_edges(problem: Problem) -> list[InflightEdge]:
    """What a device's cap forces between microbatches (FIFO schedules).

    Take device d, two of its stages s and s', and the list position where
    microbatch j runs F of s'. The level after it is at most the cap. There,
    j holds A(s') (its F's up to s' are done; its B's up to s' wait for this
    F), and every microbatch holds >= 0.

    - Order, for s > s': let n >= 1 be least with A(s) + n A(s') > cap. Then
      F of s for microbatch j - n comes before: otherwise, when it runs,
      j - n holds A(s) and each of j - n + 1 .. j holds A(s') (their F of s'
      came before j's; their B of s' waits for their F of s, which comes
      after j - n's by FIFO), more than the cap.
    - Pending B: let n1 = 1 if s <= s' (then every i < j has run F of s
      before j's F of s, hence before this F) and n1 = n otherwise. An i <=
      j - n1 whose B of s has not run holds A(s) (its B's up to s wait for
      that B). At most r = floor((cap - A(s')) / A(s)) of them, and they are
      the latest (B's of s run in FIFO order), so B of s of j - n1 - r has
      run: it ends before this F starts.
    - Pending W: the same with W of s and `kept_for_w[s]` (an i whose W of s
      has not run holds at least that).
    """
    if problem.cap is None:
        return []
    m = problem.microbatches
    edges: list[InflightEdge] = []
    for d in range(problem.devices):
        held, cap = stage_prefix(problem, d), problem.cap[d]
        for s2 in held:
            for s in held:
                n1 = 1
                if s > s2:
                    if held[s2] <= 0:
                        continue
                    n1 = max(1, math.floor((cap - held[s]) / held[s2] + EPS) + 1)
                    if n1 >= m:
                        continue
                    edges.append(InflightEdge(("F", s), s2, n1))
                amounts = [("B", held[s])] + ([("W", problem.kept_for_w[s])] if problem.split_backward else [])
                for op, amount in amounts:
                    if amount > 0:
                        lag = n1 + math.floor((cap - held[s2]) / amount + EPS)
                        if 1 <= lag < m:  # lag < 1 only when the cap is infeasible
                            edges.append(InflightEdge((op, s), s2, lag))
    return edges


@dataclass(frozen=True)
class MemoryRules:
    """What the cap says about the head of an F and the tail of a B, from other microbatches' grid times.

    Head of F of s' for microbatch j (time t = its start). At its list
    position j holds A(s'). A microbatch i < j that has run F of s before
    (s <= s', or i <= j - n by the order edge) and whose pass X freeing
    `amount` of s ends after t holds that amount: X cannot come before this
    F in the list, or it would end by t. X ends no earlier than its head plus
    its cost, so if that exceeds t, it is pending. The level is at most the
    cap, so t is at least the least time at which A(s') plus the amounts
    still surely pending fits.

    Tail of B of s for microbatch j (v = time from its start to the end).
    Just before it in the list, j holds A(s) (B of s has not run; its B's
    below s wait for it). A later microbatch i > j whose F of t <= s starts
    strictly before this B holds activation[t] (its B of t waits for its B
    of s, which comes after j's by FIFO). F of t of i starts no later than
    the end minus its tail and cost, so it surely starts before this B when
    tail + cost of that F exceeds v. Hence v is at least the least value at
    which A(s) plus those amounts fits the cap.
    """

    # F index -> (cap, A(s'), [(release index, amount, least lag)])
    starts: dict[int, tuple[float, float, list[tuple[int, float, int]]]]
    # B index -> (cap, A(s), [F index of a stage t <= s, activation[t]])
    ends: dict[int, tuple[float, float, list[tuple[int, float]]]]

    @staticmethod
    def of(problem: Problem, index: dict[PassId, int], edges: list[InflightEdge]) -> MemoryRules:
        order_lag = {(e.source[1], e.target): e.lag for e in edges if e.source[0] == "F"}
        starts, ends = {}, {}
        for d in range(problem.devices):
            held, cap = stage_prefix(problem, d), problem.cap[d]
            for s2 in held:
                releases = []
                for s in held:
                    least = 1 if s <= s2 else order_lag.get((s, s2))
                    if least is not None:
                        releases += [(index[(op, s)], amount, least) for op, amount in freed_parts(problem, s)]
                starts[index[("F", s2)]] = (cap, held[s2], releases)
                later = [(index[("F", t)], problem.activation[t]) for t in held if t <= s2]
                ends[index[("B", s2)]] = (cap, held[s2], later)
        return MemoryRules(starts, ends)

    def head(self, i: int, j: int, h: float, heads: list[list[float]], cost: list[float]) -> float:
        cap, own, releases = self.starts[i]
        deepest = max((least for _k, _a, least in releases), default=0)
        pending = []
        for lag in range(1, j + 1):
            found = False
            for k, amount, least in releases:
                if lag >= least and heads[j - lag][k] + cost[k] > h:
                    pending.append((heads[j - lag][k] + cost[k], amount))
                    found = True
            if not found and lag >= deepest:
                break  # heads grow with the microbatch: older ones end earlier still
        return least_fit(h, own, pending, cap)

    def tail(self, i: int, j: int, q: float, tails: list[list[float]], cost: list[float]) -> float:
        cap, own, later = self.ends[i]
        pending = []
        for lag in range(1, len(tails) - j):
            found = False
            for k, amount in later:
                if tails[j + lag][k] + cost[k] > q + cost[i]:
                    pending.append((tails[j + lag][k] + cost[k], amount))
                    found = True
            if not found:
                break  # tails shrink with the microbatch
        return least_fit(q + cost[i], own, pending, cap) - cost[i]


def least_fit(t: float, own: float, pending: list[tuple[float, float]], cap: float) -> float:
    """Least time >= t at which `own` plus the amounts pending until after their time fit the cap."""
    total = own + sum(a for _e, a in pending)
    for e, a in sorted(pending):
        if total <= cap + EPS:
            break
        total -= a
        t = max(t, e)
    return t


@dataclass(frozen=True)
class Grid:
    """Heads and tails of every (microbatch, pass); passes in `order` (chain order)."""

    order: list[PassId]
    heads: list[list[float]]  # heads[j][i]: pass order[i] of microbatch j
    tails: list[list[float]]

    def longest_path(self, problem: Problem) -> float:
        """The longest path through the grid: no schedule is shorter."""
        costs = [problem.cost(*p) for p in self.order]
        return max(h + c + q for hs, qs in zip(self.heads, self.tails) for h, c, q in zip(hs, costs, qs))


def grid(problem: Problem, inflight: bool) -> Grid:
    """Heads and tails of every pass of every microbatch (module docstring); `inflight` adds the cap's rules."""
    order = chain_order(problem)
    index = {p: i for i, p in enumerate(order)}
    n, m = len(order), problem.microbatches
    cost = [problem.cost(*p) for p in order]
    preds: list[list[tuple[int, float]]] = [[] for _ in order]
    succs: list[list[tuple[int, float]]] = [[] for _ in order]
    for i, (op, s) in enumerate(order):
        for dop, ds, _ in dependencies(problem, op, s, 0):
            k, delay = index[(dop, ds)], comm_delay(problem, ds, s)
            preds[i].append((k, delay))
            succs[k].append((i, delay))
    back: list[list[tuple[int, int]]] = [[] for _ in order]  # into an F: (source, lag)
    ahead: list[list[tuple[int, int]]] = [[] for _ in order]  # out of a source: (F, lag)
    edges = inflight_edges(problem) if inflight else []
    for e in edges:
        back[index[("F", e.target)]].append((index[e.source], e.lag))
        ahead[index[e.source]].append((index[("F", e.target)], e.lag))
    memory = MemoryRules.of(problem, index, edges) if inflight and problem.cap is not None else None
    device = [problem.placement[s] for _op, s in order]
    before = device_sets(preds, back, device, [i for i, b in enumerate(back) if b])
    after = device_sets(succs, ahead, device, [i for i, a in enumerate(ahead) if a])

    heads: list[list[float]] = []
    for j in range(m):
        row = [0.0] * n
        heads.append(row)
        for i in range(n):
            h = max((row[k] + cost[k] + delay for k, delay in preds[i]), default=0.0)
            if j:
                h = max(h, heads[j - 1][i] + cost[i])
            for k, lag in back[i]:
                if j >= lag:
                    h = max(h, heads[j - lag][k] + cost[k])
            if i in before:
                h = max(h, one_machine([(heads[j - d][k], cost[k]) for k, d in before[i] if d <= j]))
            if memory is not None and i in memory.starts:
                h = memory.head(i, j, h, heads, cost)
            row[i] = h
    tails: list[list[float]] = [[0.0] * n for _ in range(m)]
    for j in reversed(range(m)):
        row = tails[j]
        for i in reversed(range(n)):
            q = max((delay + cost[k] + row[k] for k, delay in succs[i]), default=0.0)
            if j + 1 < m:
                q = max(q, cost[i] + tails[j + 1][i])
            for k, lag in ahead[i]:
                if j + lag < m:
                    q = max(q, cost[k] + tails[j + lag][k])
            if i in after:
                q = max(q, one_machine([(tails[j + d][k], cost[k]) for k, d in after[i] if j + d < m]))
            if memory is not None and i in memory.ends:
                q = memory.tail(i, j, q, tails, cost)
            row[i] = q
    return Grid(order, heads, tails)


def one_machine(jobs: list[tuple[float, float]]) -> float:
    """Least time one machine finishes (release, length) jobs: in release order, no idling (optimal)."""
    done = 0.0
    for release_at, length in sorted(jobs):
        done = max(done, release_at) + length
    return done


def device_sets(
    links: list[list[tuple[int, float]]], jumps: list[list[tuple[int, int]]], device: list[int], roots: list[int]
) -> dict[int, list[tuple[int, int]]]:
    """For each root: the (pass, lag) on its device linked to it within WINDOW microbatches.

    `links` are one microbatch's dependencies (or successors), `jumps` the
    in-flight edges in the same direction; FIFO links (pass, lag) to
    (pass, lag + 1). Found by a search over (pass, lag) states, lag <= WINDOW.
    """
    out = {}
    for root in roots:
        seen = {(root, 0)}
        stack = [(root, 0)]
        while stack:
            i, d = stack.pop()
            for state in [(k, d) for k, _ in links[i]] + [(i, d + 1)] + [(k, d + lag) for k, lag in jumps[i]]:
                if state[1] <= WINDOW and state not in seen:
                    seen.add(state)
                    stack.append(state)
        out[root] = [(k, d) for k, d in seen if (k, d) != (root, 0) and device[k] == device[root]]
    return out
