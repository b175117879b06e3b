"""Benchmark 2: our executor against torch.distributed.pipelining on the same delay workload.

For every registered schedule: our executor runs it; torch's
_PipelineScheduleRuntime runs the same order from the exported CSV; and,
where torch has the same algorithm built in (Schedule1F1B, ...), torch's own
class runs it too. All run side by side in one set of ranks, interleaved
step by step, on fresh modules each; the figure is the median step time
after warm-up, and the ratio ours / torch's.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.harness import (
    DelayConfig,
    build_schedule,
    delay_batch,
    our_step,
    p2p_latency,
    spawn,
    timed_step,
    write_results,
)
from pipesynth.generators import GENERATORS
from pipesynth.runtime.delay import delay_loss, delay_stages
from pipesynth.runtime.torch_pipelining import TORCH_EQUIVALENTS, builtin_schedule, csv_schedule, torch_step
from pipesynth.schedule import Schedule


def variants(name: str, schedule: Schedule, rank: int, config: DelayConfig) -> dict[str, Callable[[], Any]]:
    """One step callable per implementation, each on its own fresh delay modules."""
    cpu = torch.device("cpu")
    batch, targets = delay_batch(config)

    def fresh() -> dict[int, torch.nn.Module]:
        return delay_stages(schedule.problem, config.unit_s, schedule.problem.stages_on(rank))

    steps = {"pipesynth": our_step(schedule, fresh(), batch, targets)}
    runtimes = {"torch CSV": csv_schedule(schedule, fresh(), delay_loss, cpu)}
    if name in TORCH_EQUIVALENTS:
        runtimes[f"torch {TORCH_EQUIVALENTS[name]}"] = builtin_schedule(name, schedule, fresh(), delay_loss, cpu)
    for label, runtime in runtimes.items():
        steps[label] = functools.partial(torch_step, runtime, schedule, batch, targets)
    return steps


def worker(rank: int, world: int, config: DelayConfig, names: list[str]) -> dict[str, Any]:
    latency = p2p_latency()
    rows = []
    for name in names:
        steps = variants(name, build_schedule(name, config), rank, config)
        times: dict[str, list[float]] = {label: [] for label in steps}
        for i in range(config.warmup + config.steps):
            for label, step in steps.items():  # interleaved, so slow drifts hit every implementation alike
                seconds = timed_step(step)
                if i >= config.warmup:
                    times[label].append(seconds)
        rows.append({"schedule": name, "median_s": {label: statistics.median(t) for label, t in times.items()}})
    return {"latency_s": latency, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    DelayConfig.add_arguments(parser)
    parser.add_argument("--schedules", default="", help="Comma-separated generator names (default: all registered).")
    args = parser.parse_args()
    config = DelayConfig.from_arguments(args)
    names = args.schedules.split(",") if args.schedules else sorted(GENERATORS)
    result = spawn(worker, config.devices, config, names)
    table = [
        "| schedule | pipesynth (ms) | torch CSV (ms) | ours / torch CSV | torch built-in | built-in (ms) "
        "| ours / built-in |",
        "|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for row in result["rows"]:
        med = row["median_s"]
        ours, csv = med["pipesynth"], med["torch CSV"]
        builtin = next((k for k in med if k.startswith("torch Schedule")), None)
        cells = [row["schedule"], f"{ours * 1e3:.1f}", f"{csv * 1e3:.1f}", f"{ours / csv:.3f}"]
        ratios = [ours / csv]
        if builtin:
            ratios.append(ours / med[builtin])
            cells += [builtin.removeprefix("torch "), f"{med[builtin] * 1e3:.1f}", f"{ours / med[builtin]:.3f}"]
        else:
            cells += ["-", "-", "-"]
        worst = max(worst, *ratios)
        table.append("| " + " | ".join(cells) + " |")
    header = config.describe() + [f"Measured tiny-tensor P2P latency (gloo): {result['latency_s'] * 1e6:.0f} us."]
    summary = [f"Worst ratio ours / torch: {worst:.3f} (target <= 1 for every schedule)."]
    path = write_results("vs_torch", header, table, summary)
    print("\n".join(table + summary))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
