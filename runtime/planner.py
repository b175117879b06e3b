"""One call for a launcher: profile the stages, then plan a schedule for them under a memory budget.

    schedule = plan_pipeline(stages, sample, target, loss_fn, devices=4, microbatches=16, memory="12GiB")
    save(schedule, "pipeline.json")  # next to the training code; every rank loads it

Heterogeneous stages are the normal case (the embedding on the first, the
head and loss on the last): the problem carries every stage's own times and
bytes, and the budget is checked per device against the activation bytes of
the stages placed on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipesynth.core.problem import Number
from pipesynth.core.schedule import Schedule
from pipesynth.plan.budget import plan_problem
from pipesynth.runtime.profile import LossFn, profile_stages
from pipesynth.solver.progress import Progress


def plan_pipeline(
    stages: Sequence[nn.Module],
    sample: torch.Tensor,
    target: torch.Tensor,
    loss_fn: LossFn,
    *,
    devices: int,
    microbatches: int,
    memory: str | Number | Sequence[Number] | None = None,
    placement: str | Sequence[int] = "v",
    chunks: int | None = None,
    split_backward: bool = True,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    comm: float | None = None,
    statistic: str = "median",
    time_limit: float = 20.0,
    workers: int = 2,
    progress: Progress | None = None,
) -> Schedule:
    """Profile `stages` on one microbatch (`sample`, `target`), then plan for `devices` and `microbatches`.

    memory: the activation budget per device ("12GiB", bytes as a number,
    one per device "8GiB:8GiB", or "0.5x" of 1F1B's peak); None for no cap.
    Other options as for `profile_stages` and `plan_problem`. The schedule's
    problem is in microseconds and bytes; its provenance lists the
    handcrafted schedules that fit the same budget, with their makespans.
    """
    profile = profile_stages(
        stages, sample, target, loss_fn, repeats=repeats, warmup=warmup, threads=threads, comm=comm, statistic=statistic
    )
    problem = profile.problem(devices, microbatches, placement, chunks=chunks, split_backward=split_backward)
    return plan_problem(problem, memory, time_limit=time_limit, workers=workers, progress=progress)
