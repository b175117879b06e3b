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
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace

from pipesynth.construct import GENERATORS
from pipesynth.core.problem import Op, Problem, placement_for
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order
from pipesynth.core.units import format_bytes
from pipesynth.errors import InfeasibleError, PipesynthError
from pipesynth.plan.costs import ModelCosts, model_costs
from pipesynth.plan.job import Job
from pipesynth.plan.partition import (
    Partition,
    best_partition,
    check_partition,
    device_static,
    even_partition,
    stage_figures,
    stage_problem,
)
from pipesynth.plan.plan_file import DeviceMemory, PlanSection
from pipesynth.solver import solve

#: Generators that shape their schedule to a memory cap (rebuilt under the split's cap).
CAP_AWARE = ("v-min", "v-half", "v-zb", "zb-v")
#: Loop placements tried: stages per device.
LOOP_CHUNKS = (2, 4)


@dataclass(frozen=True)
class Layout:
    """A placement of stages on devices."""

    kind: str  # linear, loop, v
    chunks: int  # stages per device
    placement: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"loop x{self.chunks}" if self.kind == "loop" else self.kind


@dataclass
class Candidate:
    """A schedule of a partition: what it takes (bytes per device) and how long a step lasts (us)."""

    generator: str
    layout: Layout
    partition: Partition
    schedule: Schedule
    static: tuple[float, ...]
    note: str = ""

    @property
    def activation(self) -> tuple[float, ...]:
        return self.schedule.metrics.peak_memory

    @property
    def total(self) -> tuple[float, ...]:
        return tuple(s + a for s, a in zip(self.static, self.activation))

    @property
    def makespan(self) -> float:
        return self.schedule.metrics.makespan

    @property
    def label(self) -> str:
        """The generator, with the stages per device of a loop placement."""
        return f"{self.generator} x{self.layout.chunks}" if self.layout.kind == "loop" else self.generator

    def fits(self, budget: float) -> bool:
        return max(self.total) <= budget * (1 + 1e-12)


@dataclass
class PlanResult:
    """The plan, the evenly split handcrafted schedules it is compared with, and how it was found."""

    job: Job
    costs: ModelCosts
    plan: Candidate
    baselines: list[Candidate]
    skipped: dict[str, str]  # generator -> why it has no baseline
    seconds: float
    solver: dict = field(default_factory=dict)


def layouts(devices: int, layers: int) -> list[Layout]:
    """Every placement whose stages can each hold at least one layer of the model."""
    out = [Layout("linear", 1, placement_for("linear", devices))]
    out += [Layout("loop", v, placement_for("loop", devices, v)) for v in LOOP_CHUNKS]
    out.append(Layout("v", 2, placement_for("v", devices)))
    return [lay for lay in out if len(lay.placement) <= layers + 2 and (devices > 1 or lay.kind == "linear")]


def _generators(layout: Layout) -> list[str]:
    return [g.name for g in GENERATORS.values() if g.placement == layout.kind]


def inflight(schedule: Schedule) -> list[int]:
    """Per stage, the most microbatches alive at once (from F to the pass that frees the last of it)."""
    split = schedule.problem.split_backward
    frees: Op = "W" if split else "B"
    counts = [0] * schedule.problem.stages
    most = [0] * schedule.problem.stages
    for dev in schedule.actions:
        for a in dev:
            if a.op == "F":
                counts[a.stage] += 1
                most[a.stage] = max(most[a.stage], counts[a.stage])
            elif a.op == frees:
                counts[a.stage] -= 1
    return most


def _order(schedule: Schedule) -> list[list[tuple[Op, int, int]]]:
    return [[a.key for a in dev] for dev in schedule.actions]


class _Search:
    """One planning run: the job's costs, its budget and a deadline."""

    def __init__(self, job: Job, costs: ModelCosts, deadline: float) -> None:
        self.job = job
        self.costs = costs
        self.budget = job.device.budget
        self.deadline = deadline
        self.devices = job.gpus
        self.microbatches = job.training.microbatches

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
        return Candidate(name, layout, partition, schedule, self.static(layout, partition), note)

    def build(self, name: str, layout: Layout, partition: Partition, capped: bool = False) -> Candidate:
        """Generator `name` on a partition (under the budget's cap when `capped`)."""
        gen = GENERATORS[name]
        problem = self.problem(layout, partition, gen.split_backward, capped)
        return self.candidate(name, layout, partition, gen.build(problem), "capped" if capped else "")

    def retime(self, base: Candidate, partition: Partition) -> Candidate | None:
        """The same order on another partition's costs; None if that partition is not a valid split."""
        try:
            check_partition(partition, self.costs.layers)
        except PipesynthError:
            return None
        problem = self.problem(base.layout, partition, base.schedule.problem.split_backward)
        schedule = from_order(problem, _order(base.schedule), base.generator)
        return self.candidate(base.generator, base.layout, partition, schedule, base.note)

    def better(self, a: Candidate | None, b: Candidate | None) -> Candidate | None:
        """The faster of two, a fitting one before one that does not fit."""
        if a is None or b is None:
            return a or b
        return min((a, b), key=lambda c: (not c.fits(self.budget), c.makespan if c.fits(self.budget) else max(c.total)))

    def improve(self, start: Candidate, evaluations: int) -> Candidate:
        """Hill-climb on the step time: move one decoder layer across one stage boundary at a time."""
        best = start
        while evaluations > 0 and time.monotonic() < self.deadline:
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
                found = self.better(found, self.retime(best, partition))
            evaluations -= len(moves)
            if found is None or self.better(best, found) is best:
                break
            best = found
        return best


def plan_job(job: Job, costs: ModelCosts | None = None, time_limit: float = 30.0, workers: int = 2) -> PlanResult:
    """The fastest plan found for `job` whose static bytes plus activation peak fit every GPU.

    time_limit bounds the search after the baselines are built (the solver
    gets what is left). Raises InfeasibleError saying what would fit when
    nothing does (a layer larger than a GPU, or too little memory overall).
    """
    started = time.monotonic()
    costs = costs or model_costs(job)
    check_layers_fit(costs, job.device.budget)
    search = _Search(job, costs, started + time_limit)
    budget = search.budget
    baselines: list[Candidate] = []
    skipped: dict[str, str] = {}
    pool: list[Candidate] = []
    all_layouts = layouts(job.gpus, costs.layers)
    for layout in all_layouts:
        even = even_partition(costs.layers, len(layout.placement))
        for name in _generators(layout):
            try:
                base = search.build(name, layout, even)
            except PipesynthError as err:
                skipped[name] = str(err)
                continue
            baselines.append(base)
            found = base
            split = base.schedule.problem.split_backward
            proposal = best_partition(costs, layout.placement, job.gpus, inflight(base.schedule), split, budget)
            if proposal is not None:
                found = search.better(found, search.retime(base, proposal))
            pool.append(found)
    search.deadline = time.monotonic() + time_limit
    pool.sort(key=lambda c: (not c.fits(budget), c.makespan))
    # Improve the three most promising, then rebuild the cap-aware generators under their best split's cap.
    for i, cand in enumerate(pool[:3]):
        pool[i] = search.improve(cand, evaluations=4 * len(cand.partition.layers))
    for cand in list(pool):
        if cand.generator in CAP_AWARE and time.monotonic() < search.deadline:
            with contextlib.suppress(PipesynthError):
                pool.append(search.build(cand.generator, cand.layout, cand.partition, capped=True))
    best = None
    for cand in pool:
        best = search.better(best, cand)
    solver: dict = {}
    if best is None or not best.fits(budget):
        best, solver = _least_memory_plan(search, all_layouts)
    else:
        best, solver = _polish(search, best, workers)
    assert best.fits(budget), "a plan over the budget must never be returned"
    return PlanResult(job, costs, best, baselines, skipped, time.monotonic() - started, solver)


def _polish(search: _Search, best: Candidate, workers: int) -> tuple[Candidate, dict]:
    """CP-SAT on the best candidate's split and cap, for the time left; the better of the two stands."""
    left = search.deadline - time.monotonic()
    if left < 1.0:
        return best, {}
    problem = search.problem(best.layout, best.partition, best.schedule.problem.split_backward, capped=True)
    result = solve(problem, left, workers=workers)
    info = {k: result.schedule.provenance.get(k) for k in ("method", "status", "lower_bound", "gap", "seconds")}
    solved = search.candidate("solved", best.layout, best.partition, result.schedule)
    if solved.fits(search.budget) and solved.makespan < best.makespan - 1e-9:
        return solved, info
    return best, {**info, "kept": best.generator}


def _least_memory_plan(search: _Search, all_layouts: list[Layout]) -> tuple[Candidate, dict]:
    """When no generator's schedule fits: the split that fits one microbatch per stage, solved under the cap."""
    costs, job = search.costs, search.job
    for split in (True, False):
        for layout in all_layouts:
            ones = [1] * len(layout.placement)
            partition = best_partition(costs, layout.placement, job.gpus, ones, split, search.budget)
            if partition is None:
                continue
            problem = search.problem(layout, partition, split, capped=True)
            result = solve(problem, max(2.0, search.deadline - time.monotonic()), workers=2)
            info = {k: result.schedule.provenance.get(k) for k in ("method", "status", "lower_bound", "gap", "seconds")}
            return search.candidate("solved", layout, partition, result.schedule), info
    raise InfeasibleError(infeasible_message(job, costs, all_layouts))


def check_layers_fit(costs: ModelCosts, budget: float) -> None:
    """A layer whose weights, gradients, optimizer states and one microbatch's activation exceed a GPU."""
    for label, c in (
        ("the embedding", costs.embedding),
        ("a decoder layer", costs.decoder),
        ("the head (final norm, output projection and loss)", costs.head),
    ):
        need = c.static + max(c.activation, c.kept_for_w)
        if need > budget:
            raise InfeasibleError(
                f"infeasible: {label} alone needs {format_bytes(need)} (static {format_bytes(c.static)} + "
                f"activation {format_bytes(max(c.activation, c.kept_for_w))} per microbatch), over the "
                f"{format_bytes(budget)} budget per GPU; shard it (tensor parallelism) or use GPUs with more memory"
            )


def least_memory(job: Job, costs: ModelCosts) -> float:
    """The smallest budget per GPU any plan of this job can meet: one microbatch alive per stage,
    the best split over every placement."""
    best = float("inf")
    for layout in layouts(job.gpus, costs.layers):
        for split in (True, False):
            low, high = 0.0, 2 * job.device.budget

            def fits(budget: float, layout: Layout = layout, split: bool = split) -> bool:
                ones = [1] * len(layout.placement)
                return best_partition(costs, layout.placement, job.gpus, ones, split, budget) is not None

            while not fits(high):
                high *= 2
                if high > 1e18:
                    break
            for _ in range(40):
                mid = (low + high) / 2
                low, high = (low, mid) if fits(mid) else (mid, high)
            best = min(best, high)
    return best


def infeasible_message(job: Job, costs: ModelCosts, all_layouts: list[Layout]) -> str:
    """How far the budget is from the least a plan needs, and which change would make it fit."""
    need = least_memory(job, costs)
    budget = job.device.budget
    t = job.training
    hints = []
    changes: list[tuple[str, Job]] = []
    if t.recompute == "none":
        changes.append(("--recompute full", replace(job, training=replace(t, recompute="full"))))
    if t.microbatch_size > 1:
        half = t.microbatch_size // 2
        more = replace(t, microbatch_size=half, microbatches=t.microbatches * (t.microbatch_size // half))
        changes.append((f"--microbatch-size {half} --microbatches {more.microbatches}", replace(job, training=more)))
    changes.append((f"--gpus {2 * job.gpus}", replace(job, gpus=2 * job.gpus)))
    if t.zero == 1:
        changes.append(
            (
                "--zero 8 (optimizer states sharded over 8 data-parallel ranks)",
                replace(job, training=replace(t, zero=8)),
            )
        )
    for label, changed in changes:
        changed_costs = model_costs(changed) if costs.source == "analytic" else costs
        changed_need = least_memory(changed, changed_costs)
        if changed_need <= budget:
            hints.append(f"{label} (needs {format_bytes(changed_need)})")
    would = (
        "; would fit: " + ", ".join(hints)
        if hints
        else "; none of --recompute full, smaller microbatches, twice the GPUs or ZeRO-1 x8 alone fits"
    )
    return (
        f"infeasible: no plan fits {format_bytes(budget)} per GPU; the least any split needs is "
        f"{format_bytes(need)} (short by {format_bytes(need - budget)}){would}"
    )


def plan_output(result: PlanResult) -> tuple[Schedule, PlanSection]:
    """The plan's schedule, capped at each device's budget less its static bytes, and its `plan` object."""
    job, plan = result.job, result.plan
    budget = job.device.budget
    split = plan.schedule.problem.split_backward
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
    schedule = from_order(problem, _order(plan.schedule), "plan", **provenance)
    section = PlanSection(
        model=job.model.name,
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
