"""What the runtime benchmarks share: the delay workload's set-up, timing a step across ranks, P2P latency, results.

Step time is measured across ranks: every rank leaves a barrier, notes its
start, runs the step and notes its end, all on the system-wide monotonic
clock (`time.perf_counter` is CLOCK_MONOTONIC on Linux); the step took
max(end) - min(start). The barrier itself is not counted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipesynth.construct import GENERATORS, generate
from pipesynth.core.schedule import Schedule
from pipesynth.runtime.delay import delay_loss
from pipesynth.runtime.executor import PipelineExecutor

RESULTS = Path(__file__).parent / "results"
START_LOAD = os.getloadavg()[0]  # the machine's load when the benchmark started (its ranks not yet running)


@dataclass(frozen=True)
class DelayConfig:
    """The delay workload: D ranks, m microbatches, pass costs in units of `unit_s` seconds."""

    devices: int = 4
    microbatches: int = 8
    unit_s: float = 0.01
    cost: tuple[float, float, float] = (1.0, 1.0, 1.0)
    steps: int = 5
    warmup: int = 2

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--devices", type=int, default=4, help="Ranks (one device each).")
        parser.add_argument("--microbatches", type=int, default=8)
        parser.add_argument("--unit-ms", type=float, default=10.0, help="Milliseconds per cost unit.")
        parser.add_argument("--cost", default="1,1,1", help="F,B,W costs in units (e.g. 1,2,1).")
        parser.add_argument("--steps", type=int, default=5, help="Measured steps per schedule (median taken).")
        parser.add_argument("--warmup", type=int, default=2, help="Unmeasured steps first.")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> DelayConfig:
        f, b, w = (float(x) for x in args.cost.split(","))
        return cls(args.devices, args.microbatches, args.unit_ms / 1e3, (f, b, w), args.steps, args.warmup)

    def describe(self, measured: str | None = None) -> list[str]:
        """The set-up, for a results file; `measured` says what was timed (default: the median of the steps)."""
        f, b, w = self.cost
        measured = measured or f"median of {self.steps} steps after {self.warmup} warm-up steps"
        return [
            f"Delay workload: {self.devices} ranks (gloo, CPU), {self.microbatches} microbatches, "
            f"F/B/W = {f:g}/{b:g}/{w:g} units of {self.unit_s * 1e3:g} ms (sleep), tiny tensors; {measured}.",
            f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}.",
        ]


@dataclass(frozen=True)
class Arguments:
    """A delay benchmark's command line: the workload, the schedules, the results file's name."""

    config: DelayConfig
    names: list[str]
    results: str


def parse_arguments(description: str, results: str, default_schedules: str = "") -> Arguments:
    """The delay workload's options, --schedules (default: every registered generator) and --results.

    --results names the file under benchmarks/results/ (default `results`), so a
    run with other settings can sit next to the default one.
    """
    parser = argparse.ArgumentParser(description=description)
    DelayConfig.add_arguments(parser)
    parser.add_argument(
        "--schedules", default=default_schedules, help="Comma-separated generator names (default: all registered)."
    )
    parser.add_argument("--results", default=results, help=f"Results file name, without .md (default: {results}).")
    args = parser.parse_args()
    names = args.schedules.split(",") if args.schedules else sorted(GENERATORS)
    return Arguments(DelayConfig.from_arguments(args), names, args.results)


def build_schedule(name: str, config: DelayConfig) -> Schedule:
    """Generator `name` on the delay workload's problem.

    Looped placements get two chunks per device and V-shapes have two by
    construction; their stages then cost half as much, so every schedule does
    the same work per device and the step times compare across schedules.
    """
    placement = GENERATORS[name].placement
    per_device = 2 if placement in ("loop", "v") else 1
    f, b, w = (c / per_device for c in config.cost)
    cost = {"F": f, "B": b, "W": w}
    return generate(name, config.devices, config.microbatches, chunks=per_device, cost=cost)


def delay_batch(config: DelayConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per microbatch, four features: the delay stages' tiny input and target."""
    return torch.zeros(config.microbatches, 4), torch.ones(config.microbatches, 4)


def timed_step(step: Callable[[], Any]) -> float:
    """Seconds from the first rank starting `step` to the last rank finishing it (same value on every rank)."""
    dist.barrier()
    start = time.perf_counter()
    step()
    end = time.perf_counter()
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * dist.get_world_size()
    dist.all_gather_object(spans, (start, end))
    return max(e for _, e in spans) - min(s for s, _ in spans)


def p2p_latency(iters: int = 300, warmup: int = 20) -> float:
    """One-way latency (s) of a tiny tensor between ranks 0 and 1: the 10th percentile of half round trips.

    A low percentile, not the median: on a busy machine a trip now and then
    waits milliseconds for a core, which is the machine's load, not the
    wire's latency (it shows in the measured step times all the same).
    """
    rank = dist.get_rank()
    buf = torch.zeros(4)
    trips = []
    dist.barrier()
    for i in range(warmup + iters):
        if rank == 0:
            t0 = time.perf_counter()
            dist.send(buf, 1)
            dist.recv(buf, 1)
            if i >= warmup:
                trips.append(time.perf_counter() - t0)
        elif rank == 1:
            dist.recv(buf, 0)
            dist.send(buf, 0)
    latency = [statistics.quantiles(trips, n=10)[0] / 2 if rank == 0 else 0.0]
    dist.broadcast_object_list(latency, src=0)
    return latency[0]


def command_line() -> str:
    """How this benchmark was run (they run as modules from the repository root)."""
    return f"python -m benchmarks.{Path(sys.argv[0]).stem} " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def write_results(name: str, header: list[str], table: list[str], summary: list[str]) -> Path:
    """benchmarks/results/<name>.md: the exact command, the set-up, the table, the summary (also printed)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    load = (
        f"Load average (1 min): {START_LOAD:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        "(other work on the machine delays the ranks' wake-ups)."
    )
    lines = [f"Command: `{command_line()}`", "", *header, load, "", *table, "", *summary, ""]
    path.write_text("\n".join(lines))
    print("\n".join(table + summary))
    print(f"written to {path}")
    return path


def our_step(
    schedule: Schedule, modules: dict[int, torch.nn.Module], batch: torch.Tensor, targets: torch.Tensor
) -> Callable[[], Any]:
    """A no-argument callable running one step of our executor on this rank's `modules`."""
    executor = PipelineExecutor(schedule, modules, delay_loss)
    return lambda: executor.step(batch, target=targets)
