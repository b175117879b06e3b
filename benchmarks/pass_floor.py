"""Benchmark 1c: host time per pass on the delay workload, the workload alone against through our executor.

A pass of the delay workload is a sleep plus host work: the autograd ops of
the stage and loss, and the executor's own bookkeeping. After a sleep that
work runs on a cold core (caches and TLB refilled, clock ramping), so it
takes several times longer than in a hot loop, and more the longer the sleep.
This measures it in one process (one rank, one stage, no P2P, no other
ranks competing), per pass: elapsed time minus the requested sleeps minus
their measured lag, for

- the workload alone: a plain loop of F (stage + loss), B (a deferring
  backward) and W (the queued weight gradients), the least any autograd
  executor must do per pass;
- our executor: the same passes from a ZB-H1 schedule on one rank.

The difference is the executor's own share of the per-pass overhead that
executor_overhead.py sees on the critical path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.harness import write_results
from pipesynth.construct import generate
from pipesynth.runtime.delay import LAG, DelayStage, delay_loss, delay_stages
from pipesynth.runtime.executor import PipelineExecutor
from pipesynth.runtime.launch import launch
from pipesynth.runtime.split import deferring


def host_seconds_per_pass(run_passes, passes: int, slept: float) -> float:
    """Mean host time per pass of `run_passes()`: elapsed minus requested sleep minus sleep lag."""
    LAG.reset()
    start = time.perf_counter()
    run_passes()
    elapsed = time.perf_counter() - start
    return (elapsed - slept - LAG.excess_s) / passes


def workload_alone(stage: DelayStage, microbatches: int) -> None:
    x, target = torch.zeros(1, 4), torch.ones(1, 4)
    for _ in range(microbatches):
        loss = delay_loss(stage(x.detach().requires_grad_(True)), target) / microbatches
        queue: list = []
        with deferring(queue):
            torch.autograd.backward([loss])
        while queue:
            queue.pop(0)()


def measure(unit: float, microbatches: int, repeats: int) -> tuple[float, float, float]:
    """(unit, workload alone, our executor): median host seconds per pass over interleaved rounds."""
    schedule = generate("zb-h1", 1, microbatches)
    executor = PipelineExecutor(schedule, delay_stages(schedule.problem, unit), delay_loss)
    stage = DelayStage(unit, unit, unit)
    batch, targets = torch.zeros(microbatches, 4), torch.ones(microbatches, 4)
    passes, slept = 3 * microbatches, 3 * microbatches * unit
    alone, ours = [], []
    for i in range(repeats + 1):  # the first round warms up
        a = host_seconds_per_pass(lambda: workload_alone(stage, microbatches), passes, slept)
        b = host_seconds_per_pass(lambda: executor.step(batch, target=targets), passes, slept)
        if i:
            alone.append(a)
            ours.append(b)
    return unit, statistics.median(alone), statistics.median(ours)


def worker(rank: int, world: int, device: torch.device, units_s: list[float], microbatches: int, repeats: int):
    return [measure(unit, microbatches, repeats) for unit in units_s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit-ms", default="0,10,20", help="Comma-separated sleep per pass, milliseconds.")
    parser.add_argument("--microbatches", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="Measured rounds (median taken).")
    parser.add_argument("--results", default="pass_floor", help="Results file name, without .md.")
    args = parser.parse_args()
    units = [float(u) / 1e3 for u in args.unit_ms.split(",")]
    rows = launch(worker, 1, units, args.microbatches, args.repeats)[0]
    table = [
        "| sleep per pass (ms) | workload alone (us/pass) | through our executor (us/pass) "
        "| executor's share (us/pass) |",
        "|---|---|---|---|",
    ]
    for unit, alone, ours in rows:
        table.append(f"| {unit * 1e3:g} | {alone * 1e6:.0f} | {ours * 1e6:.0f} | {(ours - alone) * 1e6:.0f} |")
    header = [
        f"One rank (gloo, CPU), one delay stage, {args.microbatches} microbatches of F, B, W; host time per pass = "
        f"elapsed - requested sleeps - sleep lag, median of {args.repeats} interleaved rounds after one warm-up.",
        f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}.",
    ]
    write_results(args.results, header, table, [])


if __name__ == "__main__":
    main()
