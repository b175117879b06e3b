"""Where a delay-workload step loses time against the simulation: one traced step of our executor.

Every pass of every rank is timed (start, input received, end). Per pass:
- dispatch: its start minus the end of the previous pass on its rank (the
  executor's own work between passes: posting P2P ops, bookkeeping);
- delivery: when its input from another rank was in hand, minus the later
  of the producer's end and this pass's start (the transport, under load);
- overrun: its time from input in hand to end, minus its planned cost (sleep
  lag, autograd, hooks).
The figures are the median, 90th percentile and maximum over all passes.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from benchmarks.harness import DelayConfig, build_schedule, delay_batch, parse_arguments, write_results
from pipesynth.core.rules import dependencies
from pipesynth.runtime.delay import delay_loss, delay_stages
from pipesynth.runtime.executor import PipelineExecutor
from pipesynth.runtime.launch import launch


def instrument(executor: PipelineExecutor) -> tuple[dict, dict]:
    """Wrap the executor's pass methods; return the dicts they fill: pass -> (start, end), pass -> input in hand."""
    spans: dict[tuple, tuple[float, float]] = {}
    ready: dict[tuple, float] = {}
    for op in ("forward", "backward", "weight"):
        run = getattr(executor, f"_{op}")

        def timed(action, run=run):
            start = time.perf_counter()
            run(action)
            spans[action.key] = (start, time.perf_counter())

        setattr(executor, f"_{op}", timed)
    take = executor._take

    def taking(key, action):
        tensor = take(key, action)
        ready[action.key] = time.perf_counter()
        return tensor

    executor._take = taking
    return spans, ready


def worker(rank: int, world: int, device: torch.device, config: DelayConfig, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        schedule = build_schedule(name, config)
        batch, targets = delay_batch(config)
        modules = delay_stages(schedule.problem, config.unit_s, schedule.problem.stages_on(rank))
        executor = PipelineExecutor(schedule, modules, delay_loss)
        spans, ready = instrument(executor)
        for _ in range(config.warmup):
            executor.step(batch, target=targets)
        spans.clear()
        ready.clear()
        dist.barrier()
        executor.step(batch, target=targets)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (spans, ready))
        if rank == 0:
            rows.append(summarise(name, config, gathered))
    return rows


def summarise(name: str, config: DelayConfig, gathered: list) -> dict[str, Any]:
    schedule = build_schedule(name, config)
    problem = schedule.problem
    start, end, ready = {}, {}, {}
    for spans, got in gathered:
        for key, (a, b) in spans.items():
            start[key], end[key] = a, b
        ready.update(got)
    first = min(start.values())
    dispatch, delivery, overrun = [], [], []
    for device, actions in enumerate(schedule.actions):
        previous = first
        for action in actions:
            key = action.key
            dispatch.append(start[key] - previous)
            remote = [d for d in dependencies(problem, *key) if problem.placement[d[1]] != device]
            if remote and key in ready:
                delivery.append(ready[key] - max(start[key], *(end[d] for d in remote)))
            overrun.append(end[key] - ready.get(key, start[key]) - problem.cost(*key[:2]) * config.unit_s)
            previous = end[key]
    return {
        "schedule": name,
        "step_s": max(end.values()) - first,
        "simulated_s": schedule.metrics.makespan * config.unit_s,
        "dispatch": spread(dispatch),
        "delivery": spread(delivery),
        "overrun": spread(overrun),
    }


def spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), statistics.quantiles(values, n=10)[-1], max(values)


def main() -> None:
    arguments = parse_arguments(__doc__.splitlines()[0], "step_trace")
    config, names = arguments.config, arguments.names
    rows = launch(worker, config.devices, config, names)[0]

    def ms(triple: tuple[float, float, float]) -> str:
        return " / ".join(f"{v * 1e3:.2f}" for v in triple)

    table = [
        "| schedule | step (ms) | simulated, comm 0 (ms) | dispatch ms (median / p90 / max) "
        "| delivery ms (median / p90 / max) | overrun ms (median / p90 / max) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['schedule']} | {r['step_s'] * 1e3:.1f} | {r['simulated_s'] * 1e3:.1f} | {ms(r['dispatch'])} "
            f"| {ms(r['delivery'])} | {ms(r['overrun'])} |"
        )
    header = config.describe(f"one traced step after {config.warmup} warm-up steps (see the script's docstring)")
    write_results(arguments.results, header, table, [])


if __name__ == "__main__":
    main()
