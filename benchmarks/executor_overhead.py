"""Benchmark 1: our executor's step time against the simulated makespan, on the delay workload.

Every registered schedule runs on D ranks whose stages sleep their F, B and
W costs (so the step time is the schedule's, not the CPU's). The simulator
times the same orders with the same costs and a comm latency equal to the
tiny-tensor P2P latency measured in the same run. The ratio measured /
simulated is what the executor adds: Python, P2P, waiting (target <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from typing import Any

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
from pipesynth.runtime.delay import delay_stages
from pipesynth.simulate import simulate


def worker(rank: int, world: int, config: DelayConfig, names: list[str]) -> dict[str, Any]:
    latency = p2p_latency()
    rows = []
    for name in names:
        schedule = build_schedule(name, config)
        batch, targets = delay_batch(config)
        step = our_step(
            schedule, delay_stages(schedule.problem, config.unit_s, schedule.problem.stages_on(rank)), batch, targets
        )
        times = [timed_step(step) for _ in range(config.warmup + config.steps)][config.warmup :]
        rows.append({"schedule": name, "median_s": statistics.median(times), "min_s": min(times)})
    return {"latency_s": latency, "rows": rows}


def simulated_seconds(name: str, config: DelayConfig, latency_s: float) -> tuple[float, float]:
    """Makespan in seconds with comm 0 and with comm = the measured latency."""
    schedule = build_schedule(name, config)
    with_comm = replace(schedule, problem=replace(schedule.problem, comm=latency_s / config.unit_s))
    return schedule.metrics.makespan * config.unit_s, simulate(with_comm).makespan * config.unit_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    DelayConfig.add_arguments(parser)
    parser.add_argument("--schedules", default="", help="Comma-separated generator names (default: all registered).")
    args = parser.parse_args()
    config = DelayConfig.from_arguments(args)
    names = args.schedules.split(",") if args.schedules else sorted(GENERATORS)
    result = spawn(worker, config.devices, config, names)
    latency = result["latency_s"]
    table = [
        "| schedule | simulated, comm 0 (ms) | simulated, measured comm (ms) | measured median (ms) | min (ms) "
        "| median / simulated |",
        "|---|---|---|---|---|---|",
    ]
    ratios = []
    for row in result["rows"]:
        plain, with_comm = simulated_seconds(row["schedule"], config, latency)
        ratio = row["median_s"] / with_comm
        ratios.append(ratio)
        table.append(
            f"| {row['schedule']} | {plain * 1e3:.1f} | {with_comm * 1e3:.1f} | {row['median_s'] * 1e3:.1f} "
            f"| {row['min_s'] * 1e3:.1f} | {ratio:.3f} |"
        )
    header = config.describe() + [
        f"Measured tiny-tensor P2P latency (gloo, half round trip): {latency * 1e6:.0f} us, "
        "used as the simulator's comm."
    ]
    summary = [f"Median / simulated: worst {max(ratios):.3f}, mean {statistics.mean(ratios):.3f} (target <= 1.05)."]
    path = write_results("executor_overhead", header, table, summary)
    print("\n".join(table + summary))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
