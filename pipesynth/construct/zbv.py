"""Zero Bubble's V schedule (ZB-V): the constructive heuristic of Qi et al., written afresh.

Device i holds chunk 0 (stage i, forward flows down the devices) and
chunk 1 (stage 2D-1-i, forward flows back up). The schedule is built in
per-device order, timing each pass as it is placed:

1. warm-up: chunk-0 forwards down the pipeline; from the last device up,
   each device adds chunk-0 forwards (with the devices above it, in step)
   while it waits for its first chunk-1 forward and keeps room for it, and
   every device of the step has room (activations and caps may differ); then
   forward counts are evened out across devices;
2. rounds, each giving every device one B (chunk-0 B's first, from the last
   device up, then chunk-1 B's down) and one F; a W runs before a pass only
   if it ends before that pass's input arrives, if memory needs it, or if
   the device would otherwise idle longer than the worst device does;
3. the W's left.

`try_build` reruns with each device's idle time from the previous run
approved (the worst device sets the pace), as the original does, and keeps
the best. The result is a per-device order; the simulator times it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import PassKey, comm_delay, dependencies, memory_delta

EPS = 1e-9
Order = list[list[PassKey]]


class _Builder:
    """State of one construction: per-device clock, memory, counts and pending W's."""

    def __init__(self, problem: Problem, cap: Sequence[float], approved: Sequence[float] | None) -> None:
        p = self.p = problem
        self.d, self.m, self.cap = p.devices, p.microbatches, cap
        self.stage = [(i, 2 * p.devices - 1 - i) for i in range(p.devices)]
        self.count = {(op, c, i): 0 for op in "FBW" for c in (0, 1) for i in range(self.d)}
        self.end: dict[PassKey, float] = {}
        self.now = [0.0] * self.d
        self.mem = [0.0] * self.d
        self.idle = [0.0] * self.d  # idle time after the device's first pass
        self.pending: list[deque[int]] = [deque() for _ in range(self.d)]
        self.order: Order = [[] for _ in range(self.d)]
        self.approved = list(approved) if approved is not None else [0.0] * self.d
        self.ok = True

    def arrival(self, op: Op, c: int, i: int) -> float | None:
        """When the next (op, chunk c) pass of device i has its inputs; None if not placed yet or none left."""
        j, s = self.count[(op, c, i)], self.stage[i][c]
        if j >= self.m:
            return None
        t = 0.0
        for dep in dependencies(self.p, op, s, j):
            if dep not in self.end:
                return None
            t = max(t, self.end[dep] + comm_delay(self.p, dep[1], s))
        return t

    def fits(self, c: int, i: int, units: int = 1) -> bool:
        return self.mem[i] + units * self.p.activation[self.stage[i][c]] <= self.cap[i] + EPS

    def put(self, op: Op, c: int, i: int) -> bool:
        t = self.arrival(op, c, i)
        if t is None or (op == "F" and not self.fits(c, i)):
            self.ok = self.ok and t is not None  # an unready pass means the heuristic lost its way
            return False
        s, j = self.stage[i][c], self.count[(op, c, i)]
        start = max(self.now[i], t)
        if self.order[i]:
            self.idle[i] += start - self.now[i]
        self.end[(op, s, j)] = self.now[i] = start + self.p.cost(op, s)
        self.mem[i] += memory_delta(self.p, op, s)
        self.count[(op, c, i)] += 1
        self.order[i].append((op, s, j))
        if op == "B" and self.p.split_backward:
            self.pending[i].append(c)
        return True

    def put_w(self, i: int) -> bool:
        return bool(self.pending[i]) and self.put("W", self.pending[i].popleft(), i)

    def worst_idle(self, i: int) -> float:
        """Idle time device i may still spend: the worst device's, less what was approved for i."""
        return max(max(self.idle), max(self.approved) - self.approved[i])

    def before(self, op: Op, c: int, i: int, extra_w: bool) -> None:
        """W's before a pass: where memory needs them, where they end before its input, or to even idle."""
        if op == "F":
            while not self.fits(c, i) and self.put_w(i):
                pass
        t = self.arrival(op, c, i)
        if t is None:
            return
        while self.pending[i] and t >= self.now[i] + self.p.cost("W", self.stage[i][self.pending[i][0]]) - EPS:
            self.put_w(i)
        if extra_w and self.pending[i] and t - self.now[i] > self.worst_idle(i) - self.idle[i]:
            self.put_w(i)

    def warm_up(self) -> None:
        d, m = self.d, self.m
        for i in range(d):
            self.put("F", 0, i)
        for i in reversed(range(d)):
            if i < d - 1:
                t = self.arrival("F", 1, i)
                while t is not None and self.warm_up_step_has_room(i, t):
                    for k in range(i + 1):
                        self.put("F", 0, k)
            self.put("F", 1, i)
        chunk = 0
        for i in range(1, d):
            for _ in range(4 * m):
                behind = self.forwards(i) < self.forwards(i - 1)
                if not (behind or self.count[("F", 1, i)] <= self.count[("F", 1, i - 1)] < m):
                    break
                for k in range(d - 1, i - 1, -1):
                    if self.count[("F", chunk, k)] < m and self.arrival("F", chunk, k) is not None:
                        self.put("F", chunk, k)
                chunk = 1 - chunk

    def warm_up_step_has_room(self, i: int, chunk1_arrival: float) -> bool:
        """Whether devices 0..i can each take one more chunk-0 forward before device i's first chunk-1 F.

        Device i keeps room for the 2 + 2i chunk units the paper reserves and
        must not idle-wait past its chunk-1 input; every device above it must
        fit the forward too (its own activation and cap), or its put fails,
        device i's never becomes ready and the step would repeat for ever.
        With room on all of them every put succeeds, so each step advances
        device i's count towards m - i: the warm-up ends.
        """
        return (
            self.fits(0, i, 2 + 2 * i)
            and self.now[i] + self.p.cost("F", i) <= chunk1_arrival + EPS
            and self.count[("F", 0, i)] < self.m - i
            and all(self.fits(0, k) and self.count[("F", 0, k)] < self.m for k in range(i))
        )

    def forwards(self, i: int) -> int:
        return self.count[("F", 0, i)] + self.count[("F", 1, i)]

    def b_round(self, fill_b: bool) -> None:
        down, up = [], []  # devices doing a chunk-0 B (gradient flows up the devices) / a chunk-1 B
        for i in range(self.d):
            b0, b1 = self.count[("B", 0, i)], self.count[("B", 1, i)]
            if b0 >= b1:
                up.append(i)
            elif i == self.d - 1 or self.arrival("B", 0, i) is not None or b1 >= self.m:
                down.append(i)
            else:
                up.append(i)
        for i, c in [(i, 0) for i in reversed(down)] + [(i, 1) for i in up]:
            if self.count[("B", c, i)] < self.m:
                self.before("B", c, i, extra_w=(c == 0) or fill_b)
                self.put("B", c, i)

    def f_round(self, fill_f: bool) -> None:
        for i in range(self.d):
            f0, f1 = self.count[("F", 0, i)], self.count[("F", 1, i)]
            if f1 >= self.m:
                continue
            if f1 >= f0:
                c = 0
            elif i == self.d - 1 or self.arrival("F", 1, i) is not None:
                c = 1
            elif f0 < self.m and self.arrival("F", 0, i) is not None:
                c = 0
            else:
                continue
            self.before("F", c, i, extra_w=fill_f)
            self.put("F", c, i)

    def build(self, fill_b: bool, fill_f: bool) -> Order | None:
        self.warm_up()
        for _ in range(2 * self.m):
            self.b_round(fill_b)
            self.f_round(fill_f)
        for i in range(self.d):
            while self.put_w(i):
                pass
        placed = sum(len(o) for o in self.order)
        return self.order if self.ok and placed == len(self.p.ops) * self.p.stages * self.m else None


def zbv_orders(problem: Problem, cap: Sequence[float]) -> list[tuple[str, Order]]:
    """ZB-V orders for a V-placed problem with split backward: each setting, rerun with approved idle."""
    out = []
    for fill_b in (True, False):
        for fill_f in (True, False):
            approved = None
            best_idle = None
            for rerun in range(3):
                b = _Builder(problem, cap, approved)
                order = b.build(fill_b, fill_f)
                if order is None:
                    break
                out.append((f"zb-v rounds fill_b={fill_b} fill_f={fill_f} rerun={rerun}", order))
                worst = max(b.idle)
                if best_idle is not None and worst >= best_idle - EPS:
                    break
                best_idle, approved = worst, b.idle
    return out
