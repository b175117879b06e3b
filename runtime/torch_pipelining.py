"""Run a pipesynth schedule, or one of torch's own, through torch.distributed.pipelining; and a
pipesynth schedule behind torch's schedule interface (`torch_schedule`).

The schedule goes through the exported compute-only CSV and
`_PipelineScheduleRuntime._load_csv`, exactly as a user would hand it to
torch; torch then adds its own sends and receives. This is the baseline the
executor is compared with (tests and benchmarks/vs_torch.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining import schedules as torch_schedules

from pipesynth.construct import TORCH_NAMES
from pipesynth.core.schedule import Schedule
from pipesynth.errors import PipesynthError
from pipesynth.formats.torch_csv import to_torch_csv
from pipesynth.runtime.errors import PipelineError
from pipesynth.runtime.executor import PipelineExecutor, check_placement, device_of

# Our generator name -> torch's class running the same algorithm (the one table: construct.TORCH_NAMES).
TORCH_EQUIVALENTS: dict[str, str] = {ours: theirs for theirs, ours in TORCH_NAMES.items()}


def missing(name: str | None = None) -> str | None:
    """Why this torch cannot run the CSV route (name None) or the built-in twin of generator `name`; None if it can.

    The package supports torch >= 2.4; the CSV runtime (`_PipelineScheduleRuntime._load_csv`)
    and some built-in schedules (ScheduleZBVZeroBubble) are newer than that.
    """
    runtime = getattr(torch_schedules, "_PipelineScheduleRuntime", None)
    if name is None:
        if runtime is None or not hasattr(runtime, "_load_csv"):
            return f"torch {torch.__version__} has no _PipelineScheduleRuntime._load_csv"
        return None
    if name not in TORCH_EQUIVALENTS:
        return f"torch has no built-in schedule for {name!r}; known: {', '.join(TORCH_EQUIVALENTS)}"
    if not hasattr(torch_schedules, TORCH_EQUIVALENTS[name]):
        return f"torch {torch.__version__} has no {TORCH_EQUIVALENTS[name]}"
    return None


class _Stage(PipelineStage):
    """PipelineStage whose P2P warm-up skips a neighbour stage held by this same rank.

    torch 2.11 and earlier (before the forward/backward vote of 2.13) warm up
    a multi-stage rank with a send to and a receive from each neighbour
    stage's rank, even when that is this rank (the bottom of a V). NCCL
    accepts a send to oneself; gloo does not ("Pair is not connected"), the
    rank fails and its peers see "Connection closed by peer". The data those
    ops carry is a dummy, so dropping the self-addressed ones changes nothing.
    """

    def _get_init_p2p_neighbors_ops(self) -> list[dist.P2POp]:
        me = dist.get_rank()
        return [op for op in super()._get_init_p2p_neighbors_ops() if op.peer != me]


def _stages(
    schedule_stages: int,
    modules: Mapping[int, nn.Module],
    device: torch.device,
    group: dist.ProcessGroup | None,
) -> list[PipelineStage]:
    return [_Stage(module, stage, schedule_stages, device, group=group) for stage, module in sorted(modules.items())]


def csv_schedule(
    schedule: Schedule,
    modules: Mapping[int, nn.Module],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    group: dist.ProcessGroup | None = None,
) -> torch_schedules._PipelineScheduleRuntime:
    """torch's runtime loaded with `schedule` exported to CSV; `modules` are this rank's stages by index."""
    if why := missing():
        raise PipesynthError(why)
    rank = dist.get_rank(group)
    expected = schedule.problem.stages_on(rank)
    if sorted(modules) != expected:
        raise PipesynthError(f"rank {rank}: given modules for stages {sorted(modules)}, the schedule places {expected}")
    return _load_csv_runtime(schedule, _stages(schedule.problem.stages, modules, device, group), loss_fn, rank)


def builtin_schedule(
    name: str,
    schedule: Schedule,
    modules: Mapping[int, nn.Module],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    group: dist.ProcessGroup | None = None,
) -> torch_schedules._PipelineSchedule:
    """torch's own implementation of generator `name` on `schedule`'s problem (see TORCH_EQUIVALENTS)."""
    if why := missing(name):
        raise PipesynthError(why)
    cls = getattr(torch_schedules, TORCH_EQUIVALENTS[name])
    stages = _stages(schedule.problem.stages, modules, device, group)
    m = schedule.problem.microbatches
    if issubclass(cls, torch_schedules.PipelineScheduleSingle):
        return cls(stages[0], m, loss_fn=loss_fn)
    return cls(stages, m, loss_fn=loss_fn)


def torch_step(
    runtime: torch_schedules._PipelineSchedule,
    schedule: Schedule,
    batch: torch.Tensor,
    targets: torch.Tensor,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor | None:
    """One `step` with the arguments torch expects on this rank; the mean microbatch loss on the last stage's rank.

    torch takes the batch on the rank of stage 0 and the targets on the rank
    of the last stage (both on rank 0 for a V-shape placement).
    """
    rank = dist.get_rank(group)
    placement = schedule.problem.placement
    args = (batch,) if placement[0] == rank else ()
    if placement[-1] != rank:
        runtime.step(*args)
        return None
    losses: list[torch.Tensor] = []
    runtime.step(*args, target=targets, losses=losses)
    return torch.stack(losses).mean()


RUNTIMES = ("pipesynth", "torch")


class TorchCompatibleSchedule:
    """A pipesynth schedule behind torch.distributed.pipelining's schedule interface.

    `step(*args, target=None, losses=None, return_outputs=True, **kwargs)`
    and `eval(*args, target=None, losses=None, **kwargs)` behave as torch's
    schedules' do: whole-batch inputs cut into the schedule's microbatches,
    each microbatch's loss appended to `losses` and the last stage's merged
    outputs returned on the rank holding it (None elsewhere). runtime
    "pipesynth" runs our executor (split backward, any stage inputs and
    outputs, headers every step); "torch" runs torch's
    `_PipelineScheduleRuntime` loaded with the schedule's CSV (inputs and
    kwargs given to stage 0's rank only; torch passes kwargs to every stage
    of that rank).
    """

    def __init__(
        self,
        schedule: Schedule,
        stages: Mapping[int, nn.Module] | Sequence[PipelineStage],
        loss_fn: Callable[..., torch.Tensor] | None,
        *,
        runtime: str = "pipesynth",
        device: torch.device | str | None = None,
        group: dist.ProcessGroup | None = None,
        timeout: float = 60.0,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise PipelineError(f"runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.schedule = schedule
        self.runtime = runtime
        self.group = group
        self.rank = dist.get_rank(group)
        torch_stages = list(stages) if not isinstance(stages, Mapping) else None
        modules = dict(stages) if torch_stages is None else {st.stage_index: st.submod for st in torch_stages}
        check_placement(schedule, sorted(modules), group)
        placement = schedule.problem.placement
        self.first = placement[0] == self.rank
        self.last = placement[-1] == self.rank
        if device is None:
            device = device_of(modules)
        if runtime == "torch":
            if torch_stages is not None:
                self._torch = _load_csv_runtime(schedule, torch_stages, loss_fn, self.rank)
            else:
                self._torch = csv_schedule(schedule, modules, loss_fn, torch.device(device), group)
            self._ours = None
        else:
            self._torch = None
            self._ours = PipelineExecutor(
                schedule, modules, loss_fn, group=group, device=device, timeout=timeout, scaler=scaler
            )

    @property
    def executor(self) -> PipelineExecutor | None:
        """Our executor (runtime "pipesynth"), for its memory figures and stats; None on torch's runtime."""
        return self._ours

    def step(self, *args: Any, target: Any = None, losses: list | None = None, return_outputs: bool = True, **kwargs):
        """One training iteration (see the class docstring)."""
        if self._torch is not None:
            args, kwargs = (args, kwargs) if self.first else ((), {})
            return self._torch.step(
                *args, target=target if self.last else None, losses=losses, return_outputs=return_outputs, **kwargs
            )
        self._ours.keep_outputs = return_outputs
        self._ours.step(*args, target=target, losses=losses, **kwargs)
        return self._ours.last_outputs if self.last and return_outputs else None

    def eval(self, *args: Any, target: Any = None, losses: list | None = None, **kwargs):
        """Forward passes only, under torch.no_grad (torch's `eval`)."""
        if self._torch is not None:
            args, kwargs = (args, kwargs) if self.first else ((), {})
            with torch.no_grad():
                return self._torch.eval(*args, target=target if self.last else None, losses=losses, **kwargs)
        result = self._ours.eval_step(*args, target=target, losses=losses, **kwargs)
        return None if result is None else result.outputs


def torch_schedule(
    schedule: Schedule,
    stages: Mapping[int, nn.Module] | Sequence[PipelineStage],
    loss_fn: Callable[..., torch.Tensor] | None,
    **options: Any,
) -> TorchCompatibleSchedule:
    """`schedule` with torch.distributed.pipelining's schedule interface (TorchCompatibleSchedule).

    `stages`: this rank's stages, as {stage index: module} or as torch
    PipelineStage objects (their stage_index must follow the schedule's
    placement: a PipelineError on every rank otherwise). Options: runtime
    ("pipesynth" or "torch"), device, group, timeout, scaler.
    """
    return TorchCompatibleSchedule(schedule, stages, loss_fn, **options)


def _load_csv_runtime(
    schedule: Schedule, stages: list[PipelineStage], loss_fn, rank: int
) -> torch_schedules._PipelineScheduleRuntime:
    """torch's runtime over the caller's own PipelineStage objects, loaded with the schedule's CSV."""
    if why := missing():
        raise PipesynthError(why)
    runtime = torch_schedules._PipelineScheduleRuntime(stages, schedule.problem.microbatches, loss_fn=loss_fn)
    fd, path = tempfile.mkstemp(suffix=".csv", prefix=f"pipesynth-rank{rank}-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(to_torch_csv(schedule))
        runtime._load_csv(path)
    finally:
        os.unlink(path)
    return runtime
