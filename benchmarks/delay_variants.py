"""Benchmark 1b: what the delay workload's two overhead cuts are worth, side by side in one launch.

Three variants of the same delay stages run interleaved step by step (so
machine drift hits all alike), each on its own modules and executor:
- "graph split": the stages split their backward along the autograd graph
  (`defers_weight_grads = False`: what every B paid before), plain sleeps;
- "plain B": B is one plain backward whose weight branch queues W, plain sleeps;
- "plain B + spin": as now, the last `delay.SPIN_S` of every nap spins.
The figure is each variant's median step time over the simulated makespan
(comm = the measured P2P latency), as in executor_overhead.py.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

import pipesynth.runtime.delay as delay
from benchmarks.executor_overhead import simulated_seconds
from benchmarks.harness import (
    DelayConfig,
    build_schedule,
    delay_batch,
    our_step,
    p2p_latency,
    parse_arguments,
    timed_step,
    write_results,
)
from pipesynth.runtime.launch import launch

# label -> (stages defer their own weight gradients, spin seconds at the end of a nap)
VARIANTS = {"graph split": (False, 0.0), "plain B": (True, 0.0), "plain B + spin": (True, delay.SPIN_S)}


def worker(rank: int, world: int, device: torch.device, config: DelayConfig, names: list[str]) -> dict[str, Any]:
    latency = p2p_latency()
    rows = {}
    for name in names:
        schedule = build_schedule(name, config)
        batch, targets = delay_batch(config)
        steps = {}
        for label, (defers, _) in VARIANTS.items():
            modules = delay.delay_stages(schedule.problem, config.unit_s, schedule.problem.stages_on(rank))
            for module in modules.values():
                module.defers_weight_grads = defers
            steps[label] = our_step(schedule, modules, batch, targets)
        times: dict[str, list[float]] = {label: [] for label in VARIANTS}
        for i in range(config.warmup + config.steps):
            for label, step in steps.items():
                delay.SPIN_S = VARIANTS[label][1]
                seconds = timed_step(step)
                if i >= config.warmup:
                    times[label].append(seconds)
        rows[name] = {label: statistics.median(t) for label, t in times.items()}
    return {"latency_s": latency, "rows": rows}


def main() -> None:
    arguments = parse_arguments(__doc__.splitlines()[0], "delay_variants", default_schedules="1f1b,zb-h1,v-half,zb-v")
    config, names = arguments.config, arguments.names
    result = launch(worker, config.devices, config, names)[0]
    table = ["| schedule | simulated (ms) | " + " | ".join(f"{label} / simulated" for label in VARIANTS) + " |"]
    table.append("|---|---|" + "---|" * len(VARIANTS))
    for name, medians in result["rows"].items():
        simulated = simulated_seconds(name, config, result["latency_s"])
        cells = [f"{medians[label] / simulated:.3f}" for label in VARIANTS]
        table.append(f"| {name} | {simulated * 1e3:.1f} | " + " | ".join(cells) + " |")
    header = config.describe() + [
        f"P2P latency (simulator's comm): {result['latency_s'] * 1e6:.0f} us. Variants interleaved step by step "
        f"in one launch; spin = the last {delay.SPIN_S * 1e3:g} ms of each nap (see the script's docstring)."
    ]
    write_results(arguments.results, header, table, [])


if __name__ == "__main__":
    main()
