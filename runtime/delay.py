"""A delay workload: pipeline stages whose F, B and W take set times by sleeping.

Sleep uses no CPU (but for a short spin at the end of each nap), so 4 to 8
ranks on a 2-core machine behave like 4 to 8 accelerators (docs/design.md
section 8): what is left is the executor's own overhead (Python, P2P,
scheduling), which is what the benchmarks measure.
Tensors are tiny.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from pipesynth.core.problem import Problem
from pipesynth.runtime.split import accumulate, defer_weight_grad


@dataclass
class SleepLag:
    """How much longer than asked the workload's sleeps took in this process (the OS's wake-up lag).

    On a busy machine a sleeping rank wakes late; benchmarks subtract this
    from the executor's overhead by simulating with the realised durations.
    """

    sleeps: int = 0
    excess_s: float = 0.0

    def reset(self) -> None:
        self.sleeps, self.excess_s = 0, 0.0

    def mean_excess_s(self) -> float:
        return self.excess_s / self.sleeps if self.sleeps else 0.0


LAG = SleepLag()


# The last part of every nap spins instead of sleeping (see nap).
SPIN_S = 0.0005


def nap(seconds: float) -> None:
    """Take `seconds`: sleep all but the last SPIN_S, spin the rest; record any excess in LAG.

    A plain sleep returns late (about 0.13 ms on 16 idle cores, more under
    load) and wakes a cold core; spinning the tail ends on time with the
    core awake, as a host spinning on an accelerator's completion would.
    benchmarks/delay_variants.py measures the difference; the spin costs at
    most SPIN_S of CPU per pass.
    """
    if seconds <= 0:
        return
    start = time.perf_counter()
    deadline = start + seconds
    if seconds > SPIN_S:
        time.sleep(seconds - SPIN_S)
    while time.perf_counter() < deadline:
        pass
    LAG.sleeps += 1
    LAG.excess_s += time.perf_counter() - start - seconds


class _Sleep(torch.autograd.Function):
    """Identity whose forward sleeps `forward_s` seconds and whose backward sleeps `backward_s`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, forward_s: float, backward_s: float) -> torch.Tensor:  # type: ignore[override]
        ctx.backward_s = backward_s
        nap(forward_s)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        nap(ctx.backward_s)
        return grad, None, None


class _WeightSleep(torch.autograd.Function):
    """Identity on the weight whose backward sleeps `seconds`: the W pass.

    Inside our executor's split B (split.deferring) the sleep and the
    gradient are queued for W, like a split Linear's weight product; anywhere
    else (torch's autograd-graph split, a fused backward) they run at once.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, seconds: float) -> torch.Tensor:  # type: ignore[override]
        ctx.weight, ctx.seconds = weight, seconds
        return weight.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        weight, seconds = ctx.weight, ctx.seconds

        def weight_grad(g: torch.Tensor) -> None:
            nap(seconds)
            accumulate(weight, g)

        if defer_weight_grad(weight_grad, grad):
            return None, None
        nap(seconds)
        return grad, None


class DelayStage(nn.Module):
    """One stage: forward sleeps `f`, input-gradient backward `b`, weight-gradient backward `w` (seconds).

    `out = sleep_fb(x + sleep_w(weight))`: the gradient reaching the input
    crosses only the first sleep node (B), the one reaching the weight only the
    second (W), which our executor's split B defers to W (see _WeightSleep)
    and torch's stage_backward_input leaves for stage_backward_weight. So B
    sleeps `b`, W sleeps `w`, and a fused backward `b + w`.
    `defers_weight_grads` tells our executor so: it then runs B as one plain
    backward (like a stage of split Linears) instead of splitting the graph,
    which would add a graph walk to every B that a real model does not pay.
    """

    defers_weight_grads = True

    def __init__(self, f: float, b: float, w: float, width: int = 4):
        super().__init__()
        self.f, self.b, self.w = f, b, w
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _WeightSleep.apply(self.weight, self.w)
        return _Sleep.apply(x + weight, self.f, self.b)

    def extra_repr(self) -> str:
        return f"f={self.f:g}s, b={self.b:g}s, w={self.w:g}s"


def delay_stages(
    problem: Problem, unit_s: float, stages: list[int] | None = None, width: int = 4
) -> dict[int, DelayStage]:
    """Delay modules for `stages` (default all) with the problem's costs times `unit_s` seconds.

    For a fused problem (`split_backward: false`), `cost_b` already holds
    B + W; the module sleeps it all in the backward's input-gradient node.
    """
    chosen = range(problem.stages) if stages is None else stages
    return {
        s: DelayStage(problem.cost_f[s] * unit_s, problem.cost_b[s] * unit_s, problem.cost_w[s] * unit_s, width)
        for s in chosen
    }


def delay_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error: the loss of the delay workload (its value does not matter)."""
    return ((output - target) ** 2).mean()
