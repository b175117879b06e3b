"""Block search: the best building block (docs/design.md sections 3 and 4) by CP-SAT.

At a fixed interval T, one variable per (op, stage) gives the pass's offset
o = q*T + r in one microbatch's block, with 0 <= r < T. Copies of the block
never collide when, on every device, each pass's interval [r, r+c) and its
shifted twin [r+T, r+T+c) share one no-overlap constraint.

Memory is the exact steady state, not the ceil bound of Eq. 1: a stage's
activation is held in segments from the start of its F to the end of the pass
that frees it (B frees `activation - kept_for_w`, W the rest). A segment of
length l = qT + rho, seen from a moment whose phase is d after the segment's
start modulo T, has q + [d < rho] live copies. Memory peaks right after an F
(docs/design.md counts memory in list order), so for every F on a device the sum
over the device's segments, at that F's phase, must fit the cap.

`search_block` finds the smallest T it can (bisecting with fixed-T probes
between the work bound and the interval of a greedy or uniform-slot block),
then the shortest block at that T.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from pipesynth.construct.blocks import Block, periodic_order
from pipesynth.core.problem import Problem
from pipesynth.core.rules import PassId, PassKey, releasing_passes
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order, simulate
from pipesynth.solver.bounds import heads_and_tails, sequential_order
from pipesynth.solver.greedy import first_greedy_block
from pipesynth.solver.progress import Progress, SolverParams, report
from pipesynth.solver.scaled import Scaled


@dataclass(frozen=True)
class BlockModelResult:
    """Outcome of one block model at one interval (integer, scaled units).

    `offsets` maps (op, stage, r) to the pass's offset for the block's r-th
    microbatch (r = 0 only, in a one-microbatch block).
    """

    status: str  # "optimal", "feasible", "infeasible" or "unknown"
    interval: int | None
    offsets: dict[PassKey, int] | None
    length: int | None


def solve_block(
    scaled: Scaled,
    T: int,
    params: SolverParams,
    time_limit: float,
    optimize: bool,
    hint: tuple[int, dict[PassId, int]] | None = None,
    horizon: int | None = None,
    per_block: int = 1,
) -> BlockModelResult:
    """Find a block of `per_block` microbatches repeatable every T (the shortest one if `optimize`).

    With k = `per_block` > 1, microbatch r + n k runs the block's r-th
    offsets plus n T: the microbatches of a period may differ, which one
    microbatch per period cannot express. They are numbered by their first
    F, all within the first period.
    """
    p = scaled.problem
    passes = scaled.passes()
    if any(scaled.c(*k) > T for k in passes):
        return BlockModelResult("infeasible", None, None, None)
    heads, tails = heads_and_tails_scaled(scaled)
    chain = chain_length(scaled)
    if horizon is None:
        horizon = chain + len(passes) * T  # generous: a block may wait up to T per pass
    copies = range(per_block)
    model = cp_model.CpModel()
    off, rem = {}, {}
    for r in copies:
        for op, s in passes:
            c = scaled.c(op, s)
            o = model.new_int_var(heads[(op, s)], max(heads[(op, s)], horizon - c - tails[(op, s)]), f"o_{op}{s}_{r}")
            rest = model.new_int_var(0, T - 1, f"r_{op}{s}_{r}")
            q = model.new_int_var(0, horizon // T, f"q_{op}{s}_{r}")
            model.add(o == q * T + rest)
            off[(op, s, r)], rem[(op, s, r)] = o, rest
    model.add(off[("F", 0, 0)] == 0)
    for r in copies:
        for a, b, delay in scaled.edges():
            model.add(off[(*b, r)] >= off[(*a, r)] + scaled.c(*a) + delay)
    for r in copies[1:]:
        model.add(off[("F", 0, r)] >= off[("F", 0, r - 1)] + scaled.c("F", 0))
        model.add(off[("F", 0, r)] < T)
    for d in range(p.devices):
        spans = []
        for key, rest in rem.items():
            c = scaled.c(key[0], key[1])
            if p.placement[key[1]] == d and c > 0:
                spans.append(model.new_fixed_size_interval_var(rest, c, f"i_{key}"))
                spans.append(model.new_fixed_size_interval_var(rest + T, c, f"j_{key}"))
        model.add_no_overlap(spans)
    if scaled.cap is not None:
        add_periodic_memory(model, scaled, T, off, rem, horizon, per_block)
    length = model.new_int_var(0, horizon, "length")
    for key, o in off.items():
        model.add(length >= o + scaled.c(key[0], key[1]))
    if optimize:
        model.minimize(length)
    if hint and hint[0] == T:
        for (op, s), v in hint[1].items():
            model.add_hint(off[(op, s, 0)], v)
    solver = params.solver(time_limit)
    status = solver.solve(model)
    name = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible", cp_model.INFEASIBLE: "infeasible"}
    name = name.get(status, "unknown")
    if name in ("optimal", "feasible"):
        if not optimize:
            name = "feasible"
        return BlockModelResult(name, T, {k: solver.value(v) for k, v in off.items()}, solver.value(length))
    return BlockModelResult(name, None, None, None)


def one_microbatch(offsets: dict[PassKey, int]) -> dict[PassId, int]:
    """A one-microbatch block's offsets by (op, stage)."""
    return {(op, s): v for (op, s, _), v in offsets.items()}


def repeat_block(scaled: Scaled, T: int, offsets: dict[PassKey, int], microbatches: int) -> Schedule:
    """A block of k microbatches repeated every T (`construct.blocks.periodic_order`), timed."""
    per_block = 1 + max(r for _, _, r in offsets)
    order = periodic_order(scaled.problem, T, offsets, microbatches)
    return from_order(scaled.problem, order, f"block of {per_block} at T={T}")


def add_periodic_memory(
    model: cp_model.CpModel, scaled: Scaled, T: int, off, rem, horizon: int, per_block: int = 1
) -> None:
    """Exact steady-state memory after every F, per device, under its cap."""
    p = scaled.problem
    releases = releasing_passes(p)
    for d in range(p.devices):
        mine = [(s, r) for r in range(per_block) for s in p.stages_on(d)]
        # (stage and copy, amount, whole periods q, remainder rho) per segment of held activation
        segments = []
        for s, r in mine:
            for op in releases:
                amount = scaled.release(op, s)
                if amount <= 0:
                    continue
                q = model.new_int_var(0, horizon // T, f"lq_{op}{s}_{r}")
                rho = model.new_int_var(0, T - 1, f"lr_{op}{s}_{r}")
                model.add(off[(op, s, r)] + scaled.c(op, s) - off[("F", s, r)] == q * T + rho)
                segments.append(((s, r), amount, q, rho))
        phase = {}  # (f, s) -> (start of F f - start of F s) mod T, f and s (stage, copy) pairs
        for f in mine:
            for s in mine:
                if f == s:
                    phase[(f, s)] = 0
                    continue
                after = model.new_bool_var(f"after_{f}_{s}")
                rf, rs = rem[("F", *f)], rem[("F", *s)]
                ph = model.new_int_var(0, T - 1, f"ph_{f}_{s}")
                model.add(rf >= rs).only_enforce_if(after)
                model.add(ph == rf - rs).only_enforce_if(after)
                model.add(rf < rs).only_enforce_if(after.Not())
                model.add(ph == rf - rs + T).only_enforce_if(after.Not())
                phase[(f, s)] = ph
        for f in mine:
            terms = []
            for s, amount, q, rho in segments:
                live = model.new_bool_var(f"live_{f}_{s}")
                # not counted as live only if the phase is past the remainder
                model.add(rho <= phase[(f, s)]).only_enforce_if(live.Not())
                terms.append(amount * (q + live))
            model.add(sum(terms) <= scaled.cap[d])


def heads_and_tails_scaled(scaled: Scaled) -> tuple[dict[PassId, int], dict[PassId, int]]:
    heads, tails = heads_and_tails(scaled_problem(scaled))
    return {k: round(v) for k, v in heads.items()}, {k: round(v) for k, v in tails.items()}


def chain_length(scaled: Scaled) -> int:
    """One microbatch's critical path alone: no block is shorter (integer, scaled units)."""
    heads, tails = heads_and_tails_scaled(scaled)
    return max(heads[k] + scaled.c(*k) + tails[k] for k in heads)


def scaled_problem(scaled: Scaled) -> Problem:
    """The problem with the integer costs (for the graph helpers)."""
    from dataclasses import replace

    f = [float(x) for x in scaled.cost["F"]]
    b = [float(x) for x in scaled.cost["B"]]
    w = [float(x) for x in scaled.cost["W"]]
    return replace(scaled.problem, cost_f=tuple(f), cost_b=tuple(b), cost_w=tuple(w), comm=float(scaled.comm))


def work_interval(scaled: Scaled) -> int:
    """No interval can be shorter than any device's work for one microbatch."""
    p = scaled.problem
    per_device = [sum(scaled.c(op, s) for s in p.stages_on(d) for op in p.ops) for d in range(p.devices)]
    return max([*per_device, *(scaled.c(*k) for k in scaled.passes())])


@dataclass(frozen=True)
class BlockSearch:
    """Blocks found (real units), best interval first; status "optimal" if T is the smallest
    and the block the shortest there. `others` are further candidates worth unrolling
    (e.g. a uniform-slot block, which can squeeze below its interval)."""

    block: Block
    length: float
    status: str
    seconds: float
    others: tuple[Block, ...] = ()


def sequential_block(scaled: Scaled) -> dict[PassId, int]:
    """One microbatch run alone through the whole chain (integer offsets): fits the least cap."""
    from dataclasses import replace

    one = replace(scaled_problem(scaled), microbatches=1)
    sim = simulate(from_order(one, sequential_order(one), "sequential"))
    return {(a.op, a.stage): round(a.start) for dev in sim.timed_schedule().actions for a in dev}


def uniform_slot_block(scaled: Scaled, params: SolverParams, time_limit: float) -> tuple[int, dict[PassId, int]] | None:
    """A block of the problem with every pass one slot long, stretched to real costs.

    Slot = the longest pass; comm rounds up to whole slots. Stretching keeps
    every dependency, collision and live copy count valid (each real pass
    fits its slot), and the equal-cost model is easy for CP-SAT: this gives
    the search a good upper interval where greedy placement does not.
    """
    from dataclasses import replace

    slot = max(scaled.c(*k) for k in scaled.passes())
    if slot <= 0:
        return None
    p = scaled.problem
    ones = tuple(1.0 for _ in p.placement)
    uniform = replace(
        p,
        cost_f=ones,
        cost_b=ones,
        cost_w=ones if p.split_backward else tuple(0.0 for _ in ones),
        comm=float(-(-scaled.comm // slot)),
        cap=None if scaled.cap is None else tuple(float(c) for c in scaled.cap),
        activation=tuple(float(a) for a in scaled.activation),
        kept_for_w=tuple(float(k) for k in scaled.kept),
    )
    found = search_block(uniform, params, time_limit, stretch=False)
    ts = Scaled.of(uniform).time_scale
    if found is None:
        return None
    return round(found.block.interval * ts) * slot, {k: round(v * ts) * slot for k, v in found.block.offsets.items()}


def search_block(
    problem: Problem,
    params: SolverParams,
    time_limit: float,
    progress: Progress | None = None,
    stretch: bool = True,
) -> BlockSearch:
    """The smallest interval with a block under the cap, then the shortest block there.

    Upper intervals come from a greedy block and (with `stretch`, when costs
    differ) a stretched uniform-slot block; fixed-T probes then bisect down
    from the best of them towards the work bound. The result says "optimal"
    only when every smaller T is proven infeasible and the block is the
    shortest at its T.
    """
    start = time.monotonic()
    scaled = Scaled.of(problem)
    ts = scaled.time_scale
    lo = work_interval(scaled)
    seq = sequential_block(scaled)
    hi = max(seq[k] + scaled.c(*k) for k in seq)
    chain = chain_length(scaled)
    horizon = hi + chain

    mark = params.now()

    def left() -> float:
        return max(0.05, time_limit - (params.now() - mark))

    starts = [first_greedy_block(scaled, lo, hi) or (hi, seq)]
    costs = {scaled.c(*k) for k in scaled.passes()}
    if stretch and len(costs) > 1:
        slotted = uniform_slot_block(scaled, params, 0.25 * time_limit)
        if slotted is not None and slotted[0] <= hi:
            starts.append(slotted)
            horizon = max(horizon, max(slotted[1][k] + scaled.c(*k) for k in slotted[1]) + chain)
    for T, _ in starts:
        report(progress, "block", f"starting block at T={T / ts:g}", time.monotonic() - start)
    known = min(starts, key=lambda b: b[0])
    # Bisect T between the work bound and the best known interval, with
    # fixed-T feasibility probes ("unknown" counts as no block).
    below, probes = lo - 1, []
    while known[0] - below > 1 and left() > 0.3 * time_limit and not params.stopped:
        T = below + 1 if not probes else (below + known[0]) // 2
        res = solve_block(scaled, T, params, left() / 4, optimize=False, horizon=horizon)
        probes.append((T, res.status))
        report(progress, "block", f"T={T / ts:g}: {res.status}", time.monotonic() - start)
        if res.offsets is not None:
            known = (T, one_microbatch(res.offsets))
        else:
            below = T
    T = known[0]
    best = solve_block(scaled, T, params, left(), optimize=True, hint=known, horizon=horizon)
    offsets = known[1] if best.offsets is None else one_microbatch(best.offsets)
    proven = {t for t, st in probes if st == "infeasible"}
    smallest = all(t in proven for t in range(lo, T))
    length = max(offsets[k] + scaled.c(*k) for k in offsets)
    status = "optimal" if best.status == "optimal" and smallest else "feasible"

    def real(T: int, offsets: dict[PassId, int]) -> Block:
        return Block(problem, T / ts, {k: v / ts for k, v in offsets.items()})

    block = real(T, offsets)
    others = tuple(real(T, off) for T, off in starts)
    news = f"T={block.interval:g}, block length {length / ts:g} ({status})"
    report(progress, "block", news, time.monotonic() - start)
    return BlockSearch(block, length / ts, status, time.monotonic() - start, others)
