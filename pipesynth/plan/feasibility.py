"""When nothing fits: the layer too large for a GPU, the least memory any plan needs, and what would fit.

`least_memory` is the smallest budget per GPU any split of any placement
meets with one microbatch alive per stage (the sequential schedule's
memory, the least any schedule needs: docs/design.md section 4); the
message tries one or two of: full recompute, half the microbatch size,
twice the GPUs, ZeRO-1 over 8 ranks, then more GPUs alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace

from pipesynth.core.units import format_bytes
from pipesynth.errors import InfeasibleError
from pipesynth.plan.costs import ModelCosts, model_costs
from pipesynth.plan.job import Job
from pipesynth.plan.partition import Layout, best_partition, layouts


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
            for _ in range(30):
                mid = (low + high) / 2
                low, high = (low, mid) if fits(mid) else (mid, high)
            best = min(best, high)
    return best


def _changes(job: Job, analytic: bool) -> list[tuple[str, Callable[[Job], Job]]]:
    """Single changes that lower the memory a plan needs (only more GPUs when the costs were measured)."""
    t = job.training

    def training(**fields: object) -> Callable[[Job], Job]:
        return lambda j: replace(j, training=replace(j.training, **fields))

    out: list[tuple[str, Callable[[Job], Job]]] = []
    if analytic and t.recompute == "none":
        out.append(("--recompute full", training(recompute="full")))
    if analytic and t.microbatch_size > 1:
        half = t.microbatch_size // 2
        more = t.microbatches * (t.microbatch_size // half)
        out.append(
            (f"--microbatch-size {half} --microbatches {more}", training(microbatch_size=half, microbatches=more))
        )
    out.append((f"--gpus {2 * job.gpus}", lambda j: replace(j, gpus=2 * j.gpus)))
    if analytic and t.zero == 1:
        out.append(("--zero 8", training(zero=8)))
    return out


def infeasible_message(job: Job, costs: ModelCosts) -> str:
    """How far the budget is from the least a plan needs, and which change (or pair of changes) would fit."""
    need = least_memory(job, costs)
    budget = job.device.budget
    analytic = costs.source == "analytic"
    changes = _changes(job, analytic)
    hints: list[str] = []
    for size in (1, 2):
        for combo in itertools.combinations(changes, size):
            changed = job
            for _, change in combo:
                changed = change(changed)
            changed_need = least_memory(changed, model_costs(changed) if analytic else costs)
            if changed_need <= budget:
                hints.append(f"{' '.join(label for label, _ in combo)} (needs {format_bytes(changed_need)})")
        if hints:
            break
    if not hints:  # more GPUs alone, as many as the layers allow
        gpus = 4 * job.gpus
        while gpus <= costs.layers + 2:
            more_need = least_memory(replace(job, gpus=gpus), costs)
            if more_need <= budget:
                hints.append(f"--gpus {gpus} (needs {format_bytes(more_need)})")
                break
            gpus *= 2
    labels = " or ".join(label for label, _ in changes)
    would = "; would fit: " + ", ".join(hints) if hints else f"; nothing fits by {labels}, alone or together"
    return (
        f"infeasible: no plan fits {format_bytes(budget)} per GPU; the least any split needs is "
        f"{format_bytes(need)} (short by {format_bytes(need - budget)}){would}"
    )
