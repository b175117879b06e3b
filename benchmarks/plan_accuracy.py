"""Profile -> plan -> run: does the plan predict the run, honour its byte budget, and beat handcrafted schedules?

For each workload: profile its stages in this process (runtime/profile.py),
plan with the solver under a byte budget (pipesynth.plan.budget), then run the
planned schedule -- and, for the value-of-profiling rows, the best
handcrafted schedule under the same budget and the plan made from equal
costs -- on local gloo ranks with the executor, all in one launch.

- Prediction: simulated makespan vs measured step time (median after
  warm-up, first start to last end over ranks); predicted peak activation
  bytes (the plan's own, conservative, and the three-level walk of the
  profile) vs the executor's measured peak per rank.
- Budget: measured peak <= the budget on every rank.
- Value: measured step time of the best handcrafted schedule that fits the
  budget (and of the equal-cost plan) over the plan's.

Workloads: the tiny GPT (2 ranks, V placement, real compute) and the delay
workload (sleeping F/B/W plus a ballast tensor and a Linear, so stages hold
real activation bytes), 4 ranks (V) and 8 ranks (linear), with the last
stage 2x slower in the heterogeneous rows.

    python benchmarks/plan_accuracy.py --only gpt     # -> benchmarks/results/plan_accuracy_gpt.md
    python benchmarks/plan_accuracy.py --only delay   # -> benchmarks/results/plan_accuracy_delay.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from harness import write_results  # noqa: E402

from pipesynth.core.problem import Problem  # noqa: E402
from pipesynth.core.schedule import Schedule  # noqa: E402
from pipesynth.core.simulate import from_order  # noqa: E402
from pipesynth.core.units import format_bytes  # noqa: E402
from pipesynth.formats.schedule_json import dumps, loads  # noqa: E402
from pipesynth.plan.budget import plan_problem  # noqa: E402
from pipesynth.runtime.delay import delay_loss  # noqa: E402
from pipesynth.runtime.executor import PipelineExecutor  # noqa: E402
from pipesynth.runtime.launch import launch  # noqa: E402
from pipesynth.runtime.models import GPTConfig, MarkovText, gpt_stages, lm_loss, tiny_gpt  # noqa: E402
from pipesynth.runtime.profile import ModelProfile, profile_stages  # noqa: E402
from pipesynth.runtime.split import defer_weight_grad  # noqa: E402
from pipesynth.solver.hints import handcrafted  # noqa: E402

WIDTH = 64  # features of the delay workload's tensors
ROWS = 128  # rows per microbatch: one stage input is ROWS x WIDTH float32 = 32 KiB


class _Ballast(torch.autograd.Function):
    """Identity that saves a fresh `numel`-float tensor for its backward: activation that B frees."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, numel: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(torch.zeros(numel))
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class _Sleeps(torch.autograd.Function):
    """Identity sleeping f in F and b in B, and queueing a w sleep for W (as a split layer queues its product)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, f: float, b: float, w: float) -> torch.Tensor:  # type: ignore[override]
        ctx.b, ctx.w = b, w
        time.sleep(f)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        time.sleep(ctx.b)
        w = ctx.w
        if not defer_weight_grad(lambda: time.sleep(w)):
            time.sleep(ctx.w)  # a fused backward: W's time now
        return grad, None, None, None


class BallastDelayStage(nn.Module):
    """A Linear whose input and output gradient W keeps + sleeps of f, b, w seconds in F, B, W + ballast freed by B.

    Its only parameters are the (split) Linear's, so the executor splits B and W by deferral alone.
    """

    def __init__(self, f: float, b: float, w: float) -> None:
        super().__init__()
        self.f, self.b, self.w = f, b, w
        self.linear = nn.Linear(WIDTH, WIDTH, bias=False)
        self.ballast = 2 * ROWS * WIDTH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The Linear first: its weight puts even stage 0's sleeps and ballast on the autograd graph.
        return _Ballast.apply(_Sleeps.apply(self.linear(x), self.f, self.b, self.w), self.ballast)


@dataclass(frozen=True)
class Workload:
    """A model to profile and run: the tiny GPT, or delay stages with per-stage (f, b, w) seconds."""

    name: str
    devices: int
    microbatches: int
    placement: str
    delays: tuple[tuple[float, float, float], ...] | None = None  # None: the tiny GPT
    microbatch_size: int = 4

    @property
    def stages(self) -> int:
        return self.devices * (2 if self.placement == "v" else 1)

    def modules(self) -> list[nn.Module]:
        if self.delays is None:
            return gpt_stages(tiny_gpt(GPTConfig(), seed=0), self.stages)
        torch.manual_seed(0)
        return [BallastDelayStage(*d) for d in self.delays]

    def batch(self, microbatches: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delays is None:
            cfg = GPTConfig()
            return MarkovText(cfg.vocab, 0).batch(0, microbatches * self.microbatch_size, cfg.seq_len)
        gen = torch.Generator().manual_seed(0)
        shape = (microbatches * ROWS, WIDTH)
        return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)

    @property
    def loss(self):
        return lm_loss if self.delays is None else delay_loss


def delays(
    stages: int, unit_s: float, last_factor: float, fbw: tuple[float, float, float] = (1, 1, 1)
) -> tuple[tuple[float, float, float], ...]:
    """F, B, W = `fbw` units per stage; the last stage `last_factor` times slower."""
    f, b, w = (unit_s * x for x in fbw)
    return tuple((f * k, b * k, w * k) for k in [1.0] * (stages - 1) + [last_factor])


def profile(workload: Workload, statistic: str) -> ModelProfile:
    x, y = workload.batch(1)
    return profile_stages(workload.modules(), x, y, workload.loss, repeats=11, warmup=3, threads=1, statistic=statistic)


def _rank(rank: int, world: int, device: torch.device, workload: Workload, texts: list[str], steps: int, warm: int):
    """Run the schedules round-robin, `warm + steps` steps each; return per schedule (median step s, peak bytes).

    Round-robin (step i of every schedule, then step i + 1) spreads the shared machine's load drift evenly.
    """
    executors, batches = [], []
    for text in texts:
        schedule = loads(text)
        modules = workload.modules()
        mine = {s: modules[s] for s in schedule.problem.stages_on(rank)}
        executors.append(PipelineExecutor(schedule, mine, workload.loss, timeout=120))
        batches.append(workload.batch(schedule.problem.microbatches))
    times: list[list[float]] = [[] for _ in texts]
    peaks = [0] * len(texts)
    for i in range(warm + steps):
        for k, (executor, (x, y)) in enumerate(zip(executors, batches)):
            for m in executor.modules.values():
                m.zero_grad(set_to_none=True)
            dist.barrier()
            start = time.perf_counter()
            executor.step(x, target=y)
            end = time.perf_counter()
            spans = [None] * world
            dist.all_gather_object(spans, (start, end))
            if i >= warm:
                times[k].append(max(e for _, e in spans) - min(s for s, _ in spans))
                peaks[k] = max(peaks[k], executor.stats.peak_bytes)
    return [(statistics.median(t), p) for t, p in zip(times, peaks)]


def run(workload: Workload, schedules: list[Schedule], steps: int, warm: int) -> list[tuple[float, list[int]]]:
    """Measured (median step seconds, per-rank peak bytes) of each schedule, in one launch."""
    texts = [dumps(s) for s in schedules]
    per_rank = launch(_rank, workload.devices, workload, texts, steps, warm, start_method="spawn", timeout=300)
    return [(per_rank[0][i][0], [r[i][1] for r in per_rank]) for i in range(len(schedules))]


def equal_cost_plan(problem: Problem, memory: float, time_limit: float) -> Schedule:
    """The plan a tool without profiling makes: equal stage costs and bytes (means), re-timed with the real ones."""
    s = problem.stages

    def mean(values: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(sum(values) / s for _ in values)

    blind = replace(problem, cost_f=mean(problem.cost_f), cost_b=mean(problem.cost_b), cost_w=mean(problem.cost_w))
    planned = plan_problem(blind, memory, time_limit=time_limit)
    order = [[a.key for a in dev] for dev in planned.actions]
    return from_order(problem.with_cap(planned.problem.cap), order, "solved (equal costs)")


def best_handcrafted(problem: Problem) -> Schedule | None:
    """The fastest (simulated with the profiled costs) handcrafted schedule that fits the problem's cap."""
    rivals = [s for s in handcrafted(problem) if s.name != "sequential"]
    return min(rivals, key=lambda s: s.metrics.makespan, default=None)


def tightest_handcrafted_budget(problem: Problem) -> float:
    """The smallest per-device budget (bytes) under which some handcrafted schedule (not sequential) fits."""
    rivals = [s for s in handcrafted(problem) if s.name != "sequential"]
    return min(max(s.metrics.peak_memory) for s in rivals)


def pct(measured: float, predicted: float) -> str:
    return f"{100 * (measured / predicted - 1):+.1f}%" if predicted else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="Measured steps per schedule (median).")
    parser.add_argument("--warmup", type=int, default=2, help="Unmeasured steps first.")
    parser.add_argument("--unit-ms", type=float, default=4.0, help="Delay workload: ms per cost unit.")
    parser.add_argument("--time-limit", type=float, default=10.0, help="Solver seconds per plan.")
    parser.add_argument("--only", choices=["gpt", "delay"], help="Run one workload family only.")
    parser.add_argument("--statistic", choices=["median", "mean"], default="median", help="Of the profiled pass times.")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    unit = args.unit_ms / 1e3
    workloads = []
    if args.only in (None, "gpt"):
        workloads.append(Workload("tiny GPT, V", 2, 8, "v"))
    if args.only in (None, "delay"):
        workloads += [
            Workload("delay, V, last 2x", 4, 8, "v", delays(8, unit, 2.0)),
            Workload("delay, V, F:B:W 3:4:2, last 1.5x", 2, 8, "v", delays(4, unit / 2, 1.5, (3, 4, 2))),
            Workload("delay, V, F:B:W 3:4:2, last 1.5x", 4, 8, "v", delays(8, unit / 2, 1.5, (3, 4, 2))),
            Workload("delay, linear, last 1.5x", 8, 16, "linear", delays(8, unit, 1.5)),
        ]
    pred_rows, value_rows, notes = [], [], []
    for wl in workloads:
        started = time.monotonic()
        prof = profile(wl, args.statistic)
        problem = prof.problem(wl.devices, wl.microbatches, wl.placement)
        free = plan_problem(problem, None, time_limit=args.time_limit)
        budget = tightest_handcrafted_budget(problem)
        planned = plan_problem(problem, budget, time_limit=args.time_limit)
        rival = best_handcrafted(planned.problem)
        blind = equal_cost_plan(problem, budget, args.time_limit)
        candidates = [("plan, no cap", free), ("plan, budget", planned), ("equal-cost plan", blind)]
        if rival is not None:
            candidates.append((f"{rival.name} (best handcrafted)", rival))
        measured = run(wl, [s for _, s in candidates], args.steps, args.warmup)
        for (label, sched), (seconds, peaks) in zip(candidates, measured):
            predicted_us = sched.metrics.makespan
            walk = prof.peak_bytes(sched)
            cap = sched.problem.cap
            fits = "-" if cap is None else ("yes" if all(p <= c for p, c in zip(peaks, cap)) else "NO")
            worst_plan = max(abs(m / p - 1) for m, p in zip(peaks, sched.metrics.peak_memory) if p)
            worst_walk = max(abs(m / p - 1) for m, p in zip(peaks, walk) if p)
            pred_rows.append(
                f"| {wl.name} | {wl.devices} | {label} | {predicted_us / 1e3:.1f} | {seconds * 1e3:.1f} | "
                f"{pct(seconds * 1e6, predicted_us)} | {format_bytes(max(sched.metrics.peak_memory)).split(' (')[0]} | "
                f"{format_bytes(max(walk)).split(' (')[0]} | {format_bytes(max(peaks)).split(' (')[0]} | "
                f"{100 * worst_plan:.1f}% | {100 * worst_walk:.1f}% | "
                f"{'-' if cap is None else format_bytes(max(cap)).split(' (')[0]} | {fits} |"
            )
        plan_s = measured[1][0]
        blind_s = measured[2][0]
        rival_text = "none fits" if rival is None else f"{rival.name}: {measured[3][0] * 1e3:.1f} ms"
        rival_ratio = "-" if rival is None else f"{measured[3][0] / plan_s:.3f}"
        value_rows.append(
            f"| {wl.name} | {wl.devices} | {format_bytes(budget).split(' (')[0]} | {plan_s * 1e3:.1f} | "
            f"{rival_text} | {rival_ratio} | {blind_s * 1e3:.1f} | {blind_s / plan_s:.3f} |"
        )
        costs = "/".join(f"{f:g}:{b:g}:{w:g}" for f, b, w in zip(problem.cost_f, problem.cost_b, problem.cost_w))
        notes.append(
            f"- {wl.name}: profiled F:B:W us per stage {costs}; comm {problem.comm:g} us; "
            f"{time.monotonic() - started:.0f} s for profile, plans and runs."
        )
        print(pred_rows[-len(candidates) :], value_rows[-1], notes[-1], sep="\n", flush=True)

    header = [
        "Profile -> plan -> run. Each workload is profiled in the benchmark process (1 thread, the "
        f"{args.statistic} of 11 runs",
        f"per pass), planned by the solver ({args.time_limit:g} s per plan) without a cap and under a byte budget "
        "(the smallest",
        "peak of any handcrafted schedule but sequential, on the profiled problem). Every schedule then runs on",
        "local gloo ranks (1 thread each) with the executor, round-robin (one step of each in turn): the median",
        f"of {args.steps} steps after {args.warmup} warm-up steps. Delay workload: F=B=W=1 unit of "
        f"{args.unit_ms:g} ms (sleep) per stage",
        f"(or 3:4:2 half-units), the last stage 1.5x or 2x, plus a {ROWS}x{WIDTH} Linear and a ballast tensor "
        "freed by B,",
        "so that stages hold real activation bytes.",
        f"Machine: {os.cpu_count()} CPU cores shared with other jobs (1-minute load average {load:.1f} at the "
        f"start), torch {torch.__version__}.",
    ]
    table = [
        "### Prediction and budget",
        "",
        "Time error = measured / simulated - 1. Peak columns are the largest over ranks; error columns the",
        "worst rank's |measured / predicted - 1|, for the plan's own peak (the problem's memory rule, which",
        "cannot let B add bytes and so counts the highest level from F to the end of B from F on) and for",
        "the three-level walk of the same profile (level after F, peak during B, level after B, freed by W).",
        "",
        "| workload | ranks | schedule | simulated ms | measured ms | time error | plan peak | walk peak |"
        " measured peak | plan peak error | walk peak error | budget | fits |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *pred_rows,
        "",
        "### Value of profiling (same byte budget, measured step time)",
        "",
        "| workload | ranks | budget | plan ms | best handcrafted that fits | handcrafted / plan |"
        " equal-cost plan ms | equal-cost / plan |",
        "|---|---|---|---|---|---|---|---|",
        *value_rows,
    ]
    name = "plan_accuracy" + (f"_{args.only}" if args.only else "") + ("_mean" if args.statistic == "mean" else "")
    write_results(name, header, table, notes)


if __name__ == "__main__":
    main()
