"""Measure a model's pipeline stages: pass times, activation bytes, P2P latency -> a Problem.

Each stage runs its F, B and W on one device exactly as the executor runs
them, with the executor's own functions: F under the activation meter's
saved-tensor hooks, the last stage's F including the loss; B as
`input_backward` (split layers deferring their weight-gradient products,
other parameters split along the autograd graph); W as `weight_backward`. Times are the
median (or mean) over `repeats` runs after `warmup`; activation bytes are what the
meter holds after F and still holds after B: the bytes the executor's meter
counts. The problem comes out in microseconds and bytes (`Units(time="us",
memory="bytes")`).

Memory after B is often *more* than after F: a split layer keeps its output
gradient for W on top of its input, and during B those gradients pile up
before autograd frees the graph. docs/design.md's memory rule has B only
release, so the problem sets `activation` to the highest level seen from F
to the end of B, and `kept_for_w` to the level after B: the simulated level
is then exact after B and never below the real one before, so a planned cap
holds (`ModelProfile.peak_bytes` walks the finer three levels).

Profiling switches the stages' Linear and Embedding layers to
their split twins in place (as the executor would) and leaves every
parameter's `.grad` as it found it.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from pipesynth.core.problem import Problem, make_problem, placement_for
from pipesynth.core.schedule import Schedule
from pipesynth.core.units import PROFILED
from pipesynth.errors import PipesynthError
from pipesynth.runtime.errors import PipelineError
from pipesynth.runtime.memory import ActivationMeter
from pipesynth.runtime.p2p import TensorMeta
from pipesynth.runtime.passes import graph_split_params, input_backward, weight_backward
from pipesynth.runtime.payload import Layout, call, flatten, unflatten
from pipesynth.runtime.split import make_splittable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: How repeated pass times become one number. The median ignores outliers (right on a dedicated
#: device); the mean keeps the waits a shared machine imposes, which a long run pays in proportion.
STATISTICS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "mean": statistics.fmean}


@dataclass(frozen=True)
class StageProfile:
    """One stage's measured passes (microseconds) and activation (bytes) for one microbatch."""

    stage: int
    forward_us: float
    backward_us: float  # B: the input gradient (weight gradients deferred to W)
    weight_us: float
    after_f_bytes: int  # saved activations held once F has run
    during_b_bytes: int  # the highest level while B runs (the graph not yet freed, W's gradients kept)
    after_b_bytes: int  # still held (plus output gradients kept for W) once B has run
    output: TensorMeta | None  # what this stage sends on (None for the last stage)

    @property
    def activation_bytes(self) -> int:
        """The problem's `activation`: what a microbatch holds at most between F and W."""
        return max(self.after_f_bytes, self.during_b_bytes, self.after_b_bytes)


@dataclass(frozen=True)
class ModelProfile:
    """Every stage's profile and the P2P latency of the boundary tensor (microseconds)."""

    stages: tuple[StageProfile, ...]
    comm_us: float

    def problem(
        self,
        devices: int,
        microbatches: int,
        placement: str | Sequence[int] = "v",
        *,
        chunks: int | None = None,
        split_backward: bool = True,
    ) -> Problem:
        """The planning problem for these stages, in microseconds and bytes (times rounded to 1 us).

        `placement` is linear (one stage per device), v (two per device,
        V-shape), loop (`chunks` per device) or an explicit stage -> device
        list; the number of profiled stages must match it.
        """
        count = len(self.stages)
        if isinstance(placement, str):
            per_device = chunks if chunks is not None else max(1, count // max(devices, 1))
            stage_devices = placement_for(placement, devices, per_device)
            if len(stage_devices) != count:
                raise PipesynthError(
                    f"placement: {placement!r} on {devices} devices needs {len(stage_devices)} stages, "
                    f"but the model was profiled as {count} stages"
                )
        else:
            stage_devices = tuple(placement)
            if len(stage_devices) != count:
                raise PipesynthError(
                    f"placement: lists {len(stage_devices)} stages, but the model was profiled as {count} stages"
                )
        problem = make_problem(
            devices,
            microbatches,
            stage_devices,
            cost={
                "F": [round(p.forward_us) for p in self.stages],
                "B": [round(p.backward_us) for p in self.stages],
                "W": [round(p.weight_us) for p in self.stages],
            },
            comm=round(self.comm_us),
            # Fused backward frees everything in B: only the level after F counts.
            activation=[p.activation_bytes if split_backward else p.after_f_bytes for p in self.stages],
            kept_for_w=[p.after_b_bytes for p in self.stages] if split_backward else None,
            split_backward=split_backward,
        )
        return replace(problem, units=PROFILED)

    def peak_bytes(self, schedule: Schedule) -> list[float]:
        """Per device, the peak of the meter's level walked with the measured levels after F and after B.

        Finer than the problem's memory rule (which cannot let B add bytes):
        F adds the level after F, B peaks at the level during B and leaves
        the level after B, W frees it (a fused B frees it all). For
        comparing with what the executor measures; the planner keeps the
        problem's conservative rule.
        """
        peaks = []
        for dev in schedule.actions:
            level = peak = 0.0
            for a in dev:
                p = self.stages[a.stage]
                if a.op == "F":
                    level += p.after_f_bytes
                elif a.op == "B" and not schedule.problem.split_backward:
                    level -= p.after_f_bytes
                elif a.op == "B":
                    peak = max(peak, level + p.during_b_bytes - p.after_f_bytes)
                    level += p.after_b_bytes - p.after_f_bytes
                else:
                    level -= p.after_b_bytes
                peak = max(peak, level)
            peaks.append(peak)
        return peaks


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stage_device(module: nn.Module, fallback: torch.device) -> torch.device:
    for p in module.parameters():
        return p.device
    return fallback


def _sendable(stage: int, out: object, last: bool) -> tuple[list[torch.Tensor], Layout] | None:
    """What a stage returns, taken apart as the executor sends it (payload.py); the stage named if it cannot."""
    if last:
        return None
    try:
        return flatten(out, f"stage {stage}")
    except PipelineError as err:
        raise PipesynthError(str(err)) from None


def _stage_input(
    stage: int, given: tuple[Layout, list[torch.Tensor]], split: bool
) -> tuple[object, list[torch.Tensor]]:
    """As the executor: the stage's input, with the tensors that take a gradient made leaves (past stage 0
    those the previous stage's output sends a gradient back for; on stage 0 the float ones, for a graph split)."""
    layout, tensors = given
    tensors = list(tensors)
    leaves = []
    for i, t in enumerate(tensors):
        if layout.specs[i].grad if stage > 0 else (split and t.is_floating_point()):
            tensors[i] = t.detach().requires_grad_(True)
            leaves.append(tensors[i])
    return unflatten(layout, tensors), leaves


def _profile_stage(
    stage: int,
    module: nn.Module,
    given: tuple[Layout, list[torch.Tensor]],
    target: torch.Tensor | None,
    loss_fn: LossFn | None,
    repeats: int,
    warmup: int,
    statistic: str,
) -> tuple[StageProfile, tuple[Layout, list[torch.Tensor]] | None]:
    """Run F, B, W of one stage `warmup + repeats` times; return its profile and its output (taken apart)."""
    last = target is not None
    device = _stage_device(module, given[1][0].device if given[1] else torch.device("cpu"))
    meter = ActivationMeter()
    meter.exclude([*module.parameters(), *module.buffers()])
    times: dict[str, list[float]] = {"F": [], "B": [], "W": []}
    after_f = during_b = after_b = 0
    output: tuple[Layout, list[torch.Tensor]] | None = None
    grads: list[torch.Tensor] | None = None
    meta: TensorMeta | None = None
    params = graph_split_params(module)
    for rep in range(warmup + repeats):
        value, leaves = _stage_input(stage, given, params is not None)
        base = meter.level
        _sync(device)
        t0 = time.perf_counter()
        with meter.saving():
            out = call(module, value)
            if last:
                out = loss_fn(out, target)
        _sync(device)
        t1 = time.perf_counter()
        sent = _sendable(stage, out, last)
        roots = [out] if sent is None else [sent[0][i] for i in sent[1].grad_indices]
        if rep == 0:
            if last and (not isinstance(out, torch.Tensor) or out.numel() != 1):
                raise PipesynthError(f"stage {stage}: the loss function must return a scalar tensor")
            if not roots or not all(r.requires_grad for r in roots):
                raise PipesynthError(
                    f"stage {stage}: no output requires grad (no parameters and no floating-point input "
                    "on the path?); the executor needs a differentiable stage"
                )
            if sent is not None:
                output = (sent[1], [t.detach() for t in sent[0]])
                grads = [torch.ones_like(r) for r in roots]
                largest = max(sent[0], key=lambda t: t.numel())
                meta = TensorMeta(tuple(largest.shape), largest.dtype)
        after_f = meter.level - base
        meter.reset_peak()
        _sync(device)
        t2 = time.perf_counter()
        deferred = input_backward(roots, grads, leaves, params, meter.hold)
        _sync(device)
        t3 = time.perf_counter()
        del out, sent, roots
        after_b = meter.level - base
        during_b = meter.peak - base
        weight_backward(*deferred)
        del deferred
        _sync(device)
        t4 = time.perf_counter()
        if rep >= warmup:
            times["F"].append(t1 - t0)
            times["B"].append(t3 - t2)
            times["W"].append(t4 - t3)
    summary = STATISTICS[statistic]
    us = {op: summary(v) * 1e6 for op, v in times.items()}
    profile = StageProfile(stage, us["F"], us["B"], us["W"], after_f, during_b, max(after_b, 0), meta)
    return profile, output


def profile_stages(
    stages: Sequence[nn.Module],
    sample: torch.Tensor,
    target: torch.Tensor,
    loss_fn: LossFn,
    *,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    comm: float | None = None,
    comm_iters: int = 100,
    statistic: str = "median",
) -> ModelProfile:
    """Profile `stages` (in pipeline order) on their current device with one microbatch.

    sample: one microbatch of inputs to stage 0; target: its targets for
    `loss_fn(last stage output, target)` (a mean, as the executor requires).
    threads: torch intra-op threads while profiling (default: as set now;
    use what each rank will use). comm: the P2P latency in microseconds to
    record; None measures it between two local ranks (gloo on CPU, NCCL
    when the stages are on a GPU and two GPUs are visible). statistic:
    "median" (default) or "mean" of the repeated times (see STATISTICS).
    """
    if statistic not in STATISTICS:
        raise PipesynthError(f"statistic: expected one of {', '.join(STATISTICS)}, got {statistic!r}")
    if not stages:
        raise PipesynthError("stages: give at least one stage module")
    if repeats < 1 or warmup < 0:
        raise PipesynthError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for s, module in enumerate(stages):
        if not isinstance(module, nn.Module):
            raise PipesynthError(f"stage {s}: expected a torch.nn.Module, got {type(module).__name__}")
        make_splittable(module)
    saved_grads = {p: p.grad for m in stages for p in m.parameters()}
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    profiles: list[StageProfile] = []
    try:
        tensors, layout = flatten(sample.to(_stage_device(stages[0], sample.device)), "the sample")
        given = (layout, tensors)
        for s, module in enumerate(stages):
            last = s == len(stages) - 1
            tgt = target.to(_stage_device(module, sample.device)) if last else None
            try:
                profile, given = _profile_stage(
                    s, module, given, tgt, loss_fn if last else None, repeats, warmup, statistic
                )
            except PipesynthError:
                raise
            except Exception as err:
                why = f"{type(err).__name__}: {err}"
                raise PipesynthError(f"stage {s}: failed on the sample microbatch: {why}") from err
            profiles.append(profile)
            if not last:
                layout, tensors = given
                given = (layout, [t.to(_stage_device(stages[s + 1], t.device)) for t in tensors])
    finally:
        torch.set_num_threads(previous_threads)
        for p, g in saved_grads.items():
            p.grad = g
    if comm is None:
        boundary = max((p.output for p in profiles if p.output is not None), key=_numel_of, default=None)
        device = _stage_device(stages[0], sample.device)
        comm = 0.0 if boundary is None else measure_comm(boundary, device.type, iters=comm_iters)
    return ModelProfile(tuple(profiles), float(comm))


def _numel_of(meta: TensorMeta) -> int:
    return _numel(meta.shape)


def measure_comm(meta: TensorMeta, device: str = "cpu", iters: int = 100, warmup: int = 5) -> float:
    """One-way P2P latency (us) of a tensor like `meta` between two local ranks: mean half round trip.

    The mean (of the middle 80%) rather than the median: latencies add up
    along a pipeline's critical path, and on a busy machine they are
    bimodal (the transfer alone, or the transfer plus a wake-up delay of a
    scheduler tick), where the median jumps between the two modes.

    gloo on CPU; NCCL on CUDA, which needs two visible GPUs. The two ranks
    start from a fresh interpreter, so the caller needs no `__main__` guard
    and forking after profiling (unsafe with OpenMP) never happens.
    """
    if device == "cuda" and torch.cuda.device_count() < 2:
        raise PipesynthError(
            "comm: measuring NCCL latency needs two visible GPUs; give it in microseconds "
            "(comm= for profile_stages, --comm for pipesynth profile)"
        )
    dtype = str(meta.dtype).removeprefix("torch.")
    code = (
        "import json, torch; from pipesynth.runtime.launch import launch; from pipesynth.runtime.profile import _ping; "
        f"print(json.dumps(launch(_ping, 2, {list(meta.shape)!r}, torch.{dtype}, {iters}, {warmup}, "
        f"device={device!r})[0]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise PipesynthError(f"comm: measuring the P2P latency between two local ranks failed: {lines[-1]}")
    return float(done.stdout.strip().splitlines()[-1])


def _ping(rank: int, world: int, device: torch.device, shape, dtype, iters: int, warmup: int) -> float:
    import torch.distributed as dist

    buf = torch.zeros(shape, dtype=dtype, device=device)
    trips = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        if rank == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        else:
            dist.recv(buf, 0)
            dist.send(buf, 0)
        _sync(device)
        if i >= warmup:
            trips.append(time.perf_counter() - t0)
    trips.sort()
    cut = len(trips) // 10
    return statistics.fmean(trips[cut : len(trips) - cut]) / 2 * 1e6
