"""Benchmark 1: our executor's step time against the simulated makespan, on the delay workload.

Every registered schedule runs on D ranks whose stages sleep their F, B and
W costs (so the step time is the schedule's, not the CPU's). The simulator
times the same orders with the same costs and a comm latency equal to the
tiny-tensor P2P latency measured in the same run. The ratio measured /
simulated is what the executor adds: Python, P2P, waiting (target <= 1.05).
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

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
from pipesynth.core.simulate import simulate
from pipesynth.runtime.delay import LAG, delay_stages
from pipesynth.runtime.launch import launch


def worker(rank: int, world: int, device: torch.device, config: DelayConfig, names: list[str]) -> dict[str, Any]:
    latency = p2p_latency()
    rows = []
    for name in names:
        schedule = build_schedule(name, config)
        batch, targets = delay_batch(config)
        modules = delay_stages(schedule.problem, config.unit_s, schedule.problem.stages_on(rank))
        step = our_step(schedule, modules, batch, targets)
        for _ in range(config.warmup):
            timed_step(step)
        LAG.reset()
        times = [timed_step(step) for _ in range(config.steps)]
        lags: list[float] = [0.0] * world
        dist.all_gather_object(lags, LAG.mean_excess_s())
        rows.append({"schedule": name, "median_s": statistics.median(times), "lag_s": statistics.mean(lags)})
    return {"latency_s": latency, "rows": rows}


def simulated_seconds(name: str, config: DelayConfig, comm_s: float, lag_s: float = 0.0) -> float:
    """Makespan in seconds with comm `comm_s` and every pass `lag_s` longer than its cost."""
    schedule = build_schedule(name, config)
    problem = schedule.problem
    extra = lag_s / config.unit_s

    def realised(costs: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(c + extra if c > 0 else c for c in costs)

    timed = replace(
        problem,
        comm=comm_s / config.unit_s,
        cost_f=realised(problem.cost_f),
        cost_b=realised(problem.cost_b),
        cost_w=realised(problem.cost_w),
    )
    return simulate(replace(schedule, problem=timed)).makespan * config.unit_s


def main() -> None:
    arguments = parse_arguments(__doc__.splitlines()[0], "executor_overhead")
    config, names = arguments.config, arguments.names
    result = launch(worker, config.devices, config, names)[0]
    table = [
        "| schedule | simulated (ms) | measured median (ms) | median / simulated "
        "| sleep lag per pass (ms) | simulated with realised sleeps (ms) | median / that |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios, realised_ratios = [], []
    for row in result["rows"]:
        nominal = simulated_seconds(row["schedule"], config, result["latency_s"])
        realised = simulated_seconds(row["schedule"], config, result["latency_s"], row["lag_s"])
        ratios.append(row["median_s"] / nominal)
        realised_ratios.append(row["median_s"] / realised)
        table.append(
            f"| {row['schedule']} | {nominal * 1e3:.1f} | {row['median_s'] * 1e3:.1f} "
            f"| {ratios[-1]:.3f} "
            f"| {row['lag_s'] * 1e3:.2f} | {realised * 1e3:.1f} | {realised_ratios[-1]:.3f} |"
        )
    header = config.describe() + [
        f"P2P latency: {result['latency_s'] * 1e6:.0f} us, a tiny tensor's half round trip between ranks 0 and 1 "
        "(gloo, 10th percentile of 300), used as the simulator's comm. Sleep lag: how much later than "
        "asked the stages' sleeps returned (mean over measured passes and ranks); the last two columns "
        "simulate with it added to every pass, leaving the executor's own overhead."
    ]
    summary = [
        f"Median / simulated: worst {max(ratios):.3f}, mean {statistics.mean(ratios):.3f} (target <= 1.05). "
        f"With realised sleep times: worst {max(realised_ratios):.3f}, mean {statistics.mean(realised_ratios):.3f}."
    ]
    write_results(arguments.results, header, table, summary)


if __name__ == "__main__":
    main()
