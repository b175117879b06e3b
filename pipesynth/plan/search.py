"""Partition and schedule together: the fastest plan whose whole memory fits every GPU.

For every placement (linear, interleaved loop, V) and every handcrafted
generator of it, the generator's order is built once on torchtitan's even
split (that schedule is also the baseline the plan is compared with); the
partition search (partition.py) then proposes splits for the memory that
order keeps alive, each split is timed exactly by re-running the same order
on its costs (list scheduling is cheap), the best ones are improved by
moving one layer across a stage boundary at a time, the cap-aware V
generators are rebuilt under the split's real cap, and the CP-SAT solver
polishes the best candidate under that cap. Memory is whole: a device's
static bytes (weights, gradients, optimizer states) plus the activation
peak of its schedule, against the GPU's budget (docs/design.md section 9).

The time limit holds for the whole search, the baselines included: every
unit of work (a generator build, a timing, a solve) starts only before the
deadline and while the caller's stop event is clear, so at a thousand layers
on 256 GPUs the search ends one unit past the limit with the best plan found
so far (a baseline not built by then is listed as such), or says that none
fitting was found in time.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace

from pipesynth.construct import GENERATORS
from pipesynth.core.problem import Op, Problem, placement_for
from pipesynth.core.rules import memory_delta
from pipesynth.core.schedule import Action, Metrics, Schedule
from pipesynth.core.simulate import from_order, simulate
from pipesynth.errors import InfeasibleError, PipesynthError
from pipesynth.plan.costs import ModelCosts, model_costs
from pipesynth.plan.feasibility import check_layers_fit, infeasible_message
from pipesynth.plan.job import Job
from pipesynth.plan.partition import (
    Layout,
    Partition,
    best_partition,
    check_partition,
    device_static,
    even_partition,
    layouts,
    stage_figures,
    stage_problem,
)
from pipesynth.plan.plan_file import DeviceMemory, PlanSection
from pipesynth.solver import SolverParams, solve
from pipesynth.solver.background import Background

#: Generators that shape their schedule to a memory cap (rebuilt under the split's cap).
CAP_AWARE = ("v-min", "v-half", "v-zb", "zb-v")
#: Share of the time limit the slow (V-shape) baseline builders get at most; what follows gets the rest.
SLOW_BASELINES_SHARE = 0.75
#: Why an evenly split baseline is missing from the table when the search ran out of time first.
NOT_BUILT = "not built within the time limit"


@dataclass
class Candidate:
    """An order of passes on a partition: what it takes (bytes per device) and how long a step lasts (us).

    The order is kept as plain keys with the figures of its simulation; `schedule()` times it in full.
    """

    generator: str
    layout: Layout
    partition: Partition
    problem: Problem
    order: list[list[tuple[Op, int, int]]]
    metrics: Metrics
    static: tuple[float, ...]
    note: str = ""

    @property
    def activation(self) -> tuple[float, ...]:
        return self.metrics.peak_memory

    @property
    def total(self) -> tuple[float, ...]:
        return tuple(s + a for s, a in zip(self.static, self.activation))

    @property
    def makespan(self) -> float:
        return self.metrics.makespan

    @property
    def label(self) -> str:
        """The generator, with the stages per device of a loop placement."""
        return f"{self.generator} x{self.layout.chunks}" if self.layout.kind == "loop" else self.generator

    def fits(self, budget: float) -> bool:
        return max(self.total) <= budget * (1 + 1e-12)

    def schedule(self, problem: Problem | None = None, **provenance: object) -> Schedule:
        """The order timed on `problem` (default: its own), with planned times and metrics."""
        return from_order(problem or self.problem, self.order, self.label, **provenance)


@dataclass
class PlanResult:
    """The plan, the evenly split handcrafted schedules it is compared with, and how it was found."""

    job: Job
    costs: ModelCosts
    plan: Candidate
    baselines: list[Candidate]
    skipped: dict[str, str]  # generator -> why it has no baseline (a failed build, or NOT_BUILT)
    seconds: float
    solver: dict = field(default_factory=dict)
    recompute_hint: Candidate | None = None  # with_recompute's plan, when the search had time for it


def _generators(layout: Layout) -> list[str]:
    return [g.name for g in GENERATORS.values() if g.placement == layout.kind]


def inflight(problem: Problem, order: list[list[tuple[Op, int, int]]]) -> tuple[list[int], list[int]]:
    """Per stage, microbatches alive (from F to the pass that frees the last of it): the most at any
    time, and how many at its device's memory peak (on this problem's activations)."""
    frees: Op = "W" if problem.split_backward else "B"
    counts = [0] * problem.stages
    most = [0] * problem.stages
    at_peak = [0] * problem.stages
    for dev in order:
        level = peak = 0.0
        mine = {st for _, st, _ in dev}
        for op, stage, _ in dev:
            level += memory_delta(problem, op, stage)
            if op == "F":
                counts[stage] += 1
                most[stage] = max(most[stage], counts[stage])
            elif op == frees:
                counts[stage] -= 1
            if op == "F" and level > peak:
                peak = level
                for s in mine:
                    at_peak[s] = counts[s]
    return most, at_peak


def order_of(schedule: Schedule) -> list[list[tuple[Op, int, int]]]:
    return [[a.key for a in dev] for dev in schedule.actions]


def metrics_of(problem: Problem, order: list[list[tuple[Op, int, int]]]) -> Metrics:
    """Makespan, bubble rate and peak memory of an order on a problem (section 2's rules)."""
    return simulate(Schedule(problem, [[Action(*key) for key in dev] for dev in order])).metrics


def limited_1f1b_order(devices: int, microbatches: int, limit: int) -> list[list[tuple[Op, int, int]]]:
    """1F1B (fused backward, linear placement) with at most `limit` microbatches in flight per stage.

    Stage s runs min(D - s, limit) forwards, then alternates B and F; the
    warm-ups never grow along the pipeline, so every stage always has its
    next input (no deadlock), and a stage never holds more than its warm-up.
    `limit = D` is 1F1B; `limit = 1` one microbatch at a time per stage.
    """
    order = []
    for s in range(devices):
        warm = min(devices - s, limit, microbatches)
        passes: list[tuple[Op, int, int]] = [("F", s, j) for j in range(warm)]
        for j in range(microbatches):
            passes.append(("B", s, j))
            if warm + j < microbatches:
                passes.append(("F", s, warm + j))
        order.append(passes)
    return order


def build_generator(name: str, problem: Problem) -> Schedule | str:
    """Generator `name` on `problem`, or why it cannot (a job for a child process: module level, picklable)."""
    try:
        return GENERATORS[name].build(problem)
    except PipesynthError as err:
        return str(err)


class _Search:
    """One planning run: the job's costs, its budget, a deadline and a stop event (either ends it)."""

    def __init__(self, job: Job, costs: ModelCosts, deadline: float, stop: threading.Event | None = None) -> None:
        self.job = job
        self.costs = costs
        self.budget = job.device.budget
        self.deadline = deadline
        self.stop = stop or threading.Event()
        self.devices = job.gpus
        self.microbatches = job.training.microbatches

    def has_time(self, until: float | None = None) -> bool:
        """Whether another unit of work may start: before the deadline (and `until`), the stop event clear."""
        return not self.stop.is_set() and time.monotonic() < min(self.deadline, until or self.deadline)

    def problem(self, layout: Layout, partition: Partition, split: bool, capped: bool = False) -> Problem:
        return stage_problem(
            self.costs,
            partition,
            layout.placement,
            self.devices,
            self.microbatches,
            split,
            self.budget if capped else None,
        )

    def static(self, layout: Layout, partition: Partition) -> tuple[float, ...]:
        fig = stage_figures(self.costs, partition)
        return tuple(device_static(self.costs, fig, layout.placement, self.devices))

    def candidate(
        self, name: str, layout: Layout, partition: Partition, schedule: Schedule, note: str = ""
    ) -> Candidate:
        order = order_of(schedule)
        static = self.static(layout, partition)
        return Candidate(name, layout, partition, schedule.problem, order, schedule.metrics, static, note)

    def build_jobs(self, names: list[tuple[str, Layout, Partition]], capped: bool) -> list[tuple]:
        return [
            (build_generator, (name, self.problem(layout, part, GENERATORS[name].split_backward, capped)))
            for name, layout, part in names
        ]

    def proposals(
        self,
        wanted: list[tuple[str, Layout, Partition]],
        built: list[Schedule | str | None],
        until: float,
        baselines: list[Candidate],
        skipped: dict[str, str],
    ) -> list[Candidate]:
        """Each built baseline (added to `baselines`; a missing one to `skipped`: its builder's error, or
        NOT_BUILT when `until` or the stop came first) timed on the splits its memory allows: the better."""
        found = []
        for (name, layout, even), schedule in zip(wanted, built):
            if not isinstance(schedule, Schedule):
                skipped[name] = schedule or (NOT_BUILT if not self.has_time(until) else "the builder failed")
                continue
            base = self.candidate(name, layout, even, schedule)
            baselines.append(base)
            found.append(self.on_its_splits(base))
        return found

    def on_its_splits(self, base: Candidate) -> Candidate:
        """`base`'s order timed on the splits its memory allows, while there is time: the best of them."""
        best = base
        # Two estimates of what a split will hold: every stage at its own most (safe), or as at the peaks.
        for held in inflight(base.problem, base.order):
            if not self.has_time():
                break
            split = base.problem.split_backward
            proposal = best_partition(self.costs, base.layout.placement, self.devices, held, split, self.budget)
            if proposal is not None:
                best = self.better(best, self.retime(base, proposal))
        return best

    def retime(self, base: Candidate, partition: Partition) -> Candidate | None:
        """The same order on another partition's costs; None if that partition is not a valid split."""
        try:
            check_partition(partition, self.costs.layers)
        except PipesynthError:
            return None
        problem = self.problem(base.layout, partition, base.problem.split_backward)
        metrics = metrics_of(problem, base.order)
        static = self.static(base.layout, partition)
        return Candidate(base.generator, base.layout, partition, problem, base.order, metrics, static, base.note)

    def better(self, a: Candidate | None, b: Candidate | None) -> Candidate | None:
        """The faster of two, a fitting one before one that does not fit."""
        if a is None or b is None:
            return a or b
        return min((a, b), key=lambda c: (not c.fits(self.budget), c.makespan if c.fits(self.budget) else max(c.total)))

    def improve(self, start: Candidate, evaluations: int, until: float) -> Candidate:
        """Hill-climb on the step time: move one decoder layer across one stage boundary at a time."""
        best = start
        while evaluations > 0 and self.has_time(until):
            counts = list(best.partition.layers)
            moves = []
            for s in range(len(counts) - 1):
                for src, dst in ((s, s + 1), (s + 1, s)):
                    if counts[src] > 0:
                        moved = counts.copy()
                        moved[src] -= 1
                        moved[dst] += 1
                        moves.append(Partition(tuple(moved)))
            found = None
            for partition in moves[:evaluations]:
                if not self.has_time(until):
                    break
                found = self.better(found, self.retime(best, partition))
            evaluations -= len(moves)
            if found is None or self.better(best, found) is best:
                break
            best = found
        return best


def _start(jobs: list[tuple], children: int) -> list[Background]:
    """Run build jobs in up to `children` child processes side by side (job k in child k mod children)."""
    return [Background(jobs[k::children]) for k in range(min(children, len(jobs)))]


def _collect(running: list[Background], count: int, deadline: float, stop: threading.Event) -> list:
    """The `count` jobs' results in job order (None for one that failed, missed `deadline` or `stop`)."""
    results: list = [None] * count
    for k, worker in enumerate(running):
        for n, result in enumerate(worker.collect(deadline, stop)):
            results[k + n * len(running)] = result
    return results


def plan_job(
    job: Job,
    costs: ModelCosts | None = None,
    time_limit: float = 30.0,
    workers: int = 2,
    stop: threading.Event | None = None,
) -> PlanResult:
    """The fastest plan found for `job` whose static bytes plus activation peak fit every GPU.

    time_limit: the wall-clock limit of the whole search. Limited 1F1B and
    the evenly split baselines come first (the slow V-shape builders in
    `workers` child processes side by side, for three quarters of the limit
    at most), then improving splits, rebuilding under the cap and CP-SAT,
    each for a share of what is left. No unit of work starts after the
    limit or once `stop` is set: the best plan so far is returned, the
    baselines not built are in `skipped` as NOT_BUILT, and a PipesynthError
    says so if no plan that fits was found by then. Raises InfeasibleError
    saying what would fit when nothing can (a layer larger than a GPU, or
    too little memory overall).
    """
    started = time.monotonic()
    costs = costs or model_costs(job)
    if job.gpus > costs.layers + 2:
        raise PipesynthError(
            f"gpus: {job.gpus} pipeline stages for {costs.layers} decoder layers, the embedding and the head: "
            f"at most {costs.layers + 2} (each stage needs a layer)"
        )
    check_layers_fit(costs, job.device.budget)
    search = _Search(job, costs, started + time_limit, stop)
    budget = search.budget
    all_layouts = layouts(job.gpus, costs.layers)
    wanted = [
        (name, layout, even_partition(costs.layers, len(layout.placement)))
        for layout in all_layouts
        for name in _generators(layout)
    ]
    slow = [w for w in wanted if w[1].kind == "v"]
    fast = [w for w in wanted if w[1].kind != "v"]
    running = _start(search.build_jobs(slow, False), workers)
    limited = _limited_1f1b(search)  # no build, and what fits when memory is tight: first
    built = [fn(*args) if search.has_time() else None for fn, args in search.build_jobs(fast, False)]
    baselines: list[Candidate] = []
    skipped: dict[str, str] = {}
    pool = search.proposals(fast, built, search.deadline, baselines, skipped)
    slow_until = min(search.deadline, started + SLOW_BASELINES_SHARE * time_limit)
    slow_built = _collect(running, len(slow), slow_until, search.stop)
    pool += search.proposals(slow, slow_built, slow_until, baselines, skipped)
    pool += limited
    recompute_hint = with_recompute(job, costs, search.deadline, search.stop)
    pool.sort(key=lambda c: (not c.fits(budget), c.makespan))
    # Improve the three most promising splits (a third of the time left), then rebuild the cap-aware
    # generators under their best split's real cap (another third) while CP-SAT waits for the rest.
    improve_until = time.monotonic() + (search.deadline - time.monotonic()) / 3
    for i, cand in enumerate(pool[:3]):
        pool[i] = search.improve(cand, evaluations=4 * len(cand.partition.layers), until=improve_until)
    capped = [
        (c.generator, c.layout, c.partition) for c in pool if c.generator in CAP_AWARE and max(c.static) <= budget
    ]
    if not search.has_time():
        capped = []
    rebuild_until = time.monotonic() + (search.deadline - time.monotonic()) / 2
    rebuilt = _collect(_start(search.build_jobs(capped, True), workers), len(capped), rebuild_until, search.stop)
    for (name, layout, part), schedule in zip(capped, rebuilt):
        if isinstance(schedule, Schedule):
            pool.append(search.candidate(name, layout, part, schedule, "capped"))
    best = None
    for cand in pool:
        best = search.better(best, cand)
    solver: dict = {}
    if best is None or not best.fits(budget):
        best, solver = _least_memory_plan(search, all_layouts, workers, time_limit)
    else:
        best, solver = _polish(search, best, workers)
    assert best.fits(budget), "a plan over the budget must never be returned"
    return PlanResult(job, costs, best, baselines, skipped, time.monotonic() - started, solver, recompute_hint)


def _limited_1f1b(search: _Search) -> list[Candidate]:
    """1F1B with fewer microbatches in flight (D, 3D/4, D/2, D/3, D/4, 2, 1), each on the split its memory
    allows: what fits when memory is too tight for the handcrafted schedules' warm-ups."""
    d, m = search.devices, search.microbatches
    layout = Layout("linear", 1, placement_for("linear", d))
    if len(layout.placement) > search.costs.layers + 2:
        return []
    out = []
    for limit in sorted({d, -(-3 * d // 4), -(-d // 2), -(-d // 3), -(-d // 4), 2, 1}, reverse=True):
        if not search.has_time():
            break
        held = [min(d - s, limit, m) for s in range(d)]
        partition = best_partition(search.costs, layout.placement, d, held, False, search.budget)
        if partition is None:
            continue
        problem = search.problem(layout, partition, False)
        order = limited_1f1b_order(d, m, limit)
        metrics = metrics_of(problem, order)
        name = "1f1b" if limit >= d else f"1f1b-limit{limit}"
        out.append(Candidate(name, layout, partition, problem, order, metrics, search.static(layout, partition)))
    return out


def with_recompute(
    job: Job, costs: ModelCosts, deadline: float = math.inf, stop: threading.Event | None = None
) -> Candidate | None:
    """The fastest quick plan (1F1B and ZB-H1 on the even split and on the split their memory allows) if
    every decoder layer were recomputed: for a hint when memory, not compute, limits the plan. Each build
    and timing starts only before `deadline` (time.monotonic()) and while `stop` is clear."""
    if job.training.recompute == "full" or costs.source != "analytic":
        return None
    changed = replace(job, training=replace(job.training, recompute="full"))
    search = _Search(changed, model_costs(changed), deadline, stop)
    layout = Layout("linear", 1, placement_for("linear", job.gpus))
    even = even_partition(search.costs.layers, job.gpus)
    best = None
    for name in ("1f1b", "zb-h1"):
        if not search.has_time():
            break
        try:
            base = search.candidate(
                name, layout, even, GENERATORS[name].build(search.problem(layout, even, name != "1f1b"))
            )
        except PipesynthError:
            continue
        best = search.better(best, search.on_its_splits(base))
    return best if best is not None and best.fits(search.budget) else None


def _solver_info(schedule: Schedule) -> dict:
    return {k: schedule.provenance.get(k) for k in ("method", "status", "lower_bound", "gap", "seconds")}


def _polish(search: _Search, best: Candidate, workers: int) -> tuple[Candidate, dict]:
    """CP-SAT on the best candidate's split and cap, for the time left; the better of the two stands."""
    left = search.deadline - time.monotonic()
    if left < 1.0 or search.stop.is_set():
        return best, {}
    problem = search.problem(best.layout, best.partition, best.problem.split_backward, capped=True)
    result = solve(problem, left, params=SolverParams(workers=workers, stop=search.stop))
    solved = search.candidate("solved", best.layout, best.partition, result.schedule)
    if solved.fits(search.budget) and solved.makespan < best.makespan - 1e-9:
        return solved, _solver_info(result.schedule)
    return best, {**_solver_info(result.schedule), "kept": best.label}


def _least_memory_plan(
    search: _Search, all_layouts: list[Layout], workers: int, time_limit: float
) -> tuple[Candidate, dict]:
    """When no generator's schedule fits: the split that fits one microbatch per stage, solved under the cap
    for the time left. Raises InfeasibleError when no split fits, a PipesynthError when one does but the
    search has no time left (or was stopped)."""
    costs, job = search.costs, search.job
    for split in (True, False):
        for layout in all_layouts:
            ones = [1] * len(layout.placement)
            partition = best_partition(costs, layout.placement, job.gpus, ones, split, search.budget)
            if partition is None:
                continue
            if not search.has_time():
                why = "the search was stopped" if search.stop.is_set() else f"the {time_limit:g} s time limit passed"
                raise PipesynthError(
                    f"time limit: {why} before a plan that fits was found ({job.gpus} GPUs, {costs.layers} "
                    f"decoder layers; none of the schedules timed so far fits); give a longer --time-limit"
                )
            problem = search.problem(layout, partition, split, capped=True)
            params = SolverParams(workers=workers, stop=search.stop)
            result = solve(problem, search.deadline - time.monotonic(), params=params)
            return search.candidate("solved", layout, partition, result.schedule), _solver_info(result.schedule)
    raise InfeasibleError(infeasible_message(job, costs))


def plan_output(result: PlanResult) -> tuple[Schedule, PlanSection]:
    """The plan's schedule, capped at each device's budget less its static bytes, and its `plan` object."""
    job, plan = result.job, result.plan
    budget = job.device.budget
    split = plan.problem.split_backward
    problem = stage_problem(
        result.costs, plan.partition, plan.layout.placement, job.gpus, job.training.microbatches, split, budget
    )
    baselines = {b.label: round(b.makespan, 1) for b in result.baselines if b.fits(budget)}
    provenance = {
        "method": plan.label if plan.generator != "solved" else "cp-sat",
        "plan_search_seconds": round(result.seconds, 3),
        "even_split_makespan": baselines,
    }
    if result.solver:
        provenance["solver"] = result.solver
    schedule = plan.schedule(problem, **provenance)
    section = PlanSection(
        model=job.model,
        partition=plan.partition,
        placement=plan.layout.kind,
        stages_per_device=plan.layout.chunks,
        training=job.training,
        budget_bytes=budget,
        memory=tuple(DeviceMemory(s, a) for s, a in zip(plan.static, schedule.metrics.peak_memory)),
        step_time_us=schedule.metrics.makespan,
        costs=result.costs.source,
    )
    return schedule, section
