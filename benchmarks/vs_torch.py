"""Benchmark 2: our executor against torch.distributed.pipelining on the same delay workload.

For every registered schedule: our executor runs it; torch's
_PipelineScheduleRuntime runs the same order from the exported CSV; and,
where torch has the same algorithm built in (Schedule1F1B, ...), torch's own
class runs it too. All run side by side in one set of ranks, interleaved
step by step, on fresh modules each; the figures are the median step times
after warm-up and the median over steps of ours / torch's in the same round.
"""

from __future__ import annotations

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
    parse_arguments,
    timed_step,
    write_results,
)
from pipesynth.core.schedule import Schedule
from pipesynth.runtime.delay import delay_loss, delay_stages
from pipesynth.runtime.launch import launch
from pipesynth.runtime.torch_pipelining import (
    TORCH_EQUIVALENTS,
    builtin_schedule,
    csv_schedule,
    missing,
    torch_step,
)


def variants(
    name: str, schedule: Schedule, rank: int, device: torch.device, config: DelayConfig
) -> dict[str, Callable[[], Any]]:
    """One step callable per implementation, each on its own fresh delay modules."""
    batch, targets = delay_batch(config)

    def fresh() -> dict[int, torch.nn.Module]:
        return delay_stages(schedule.problem, config.unit_s, schedule.problem.stages_on(rank))

    steps = {"pipesynth": our_step(schedule, fresh(), batch, targets)}
    runtimes = {}
    if not missing():
        runtimes["torch CSV"] = csv_schedule(schedule, fresh(), delay_loss, device)
    if name in TORCH_EQUIVALENTS and not missing(name):
        runtimes[f"torch {TORCH_EQUIVALENTS[name]}"] = builtin_schedule(name, schedule, fresh(), delay_loss, device)
    for label, runtime in runtimes.items():
        steps[label] = functools.partial(torch_step, runtime, schedule, batch, targets)
    return steps


def worker(rank: int, world: int, device: torch.device, config: DelayConfig, names: list[str]) -> dict[str, Any]:
    latency = p2p_latency()
    rows = []
    for name in names:
        steps = variants(name, build_schedule(name, config), rank, device, config)
        times: dict[str, list[float]] = {label: [] for label in steps}
        for i in range(config.warmup + config.steps):
            for label, step in steps.items():  # interleaved, so slow drifts hit every implementation alike
                seconds = timed_step(step)
                if i >= config.warmup:
                    times[label].append(seconds)
        rows.append({"schedule": name, "times_s": times})
    return {"latency_s": latency, "rows": rows}


def main() -> None:
    arguments = parse_arguments(__doc__.splitlines()[0], "vs_torch")
    config, names = arguments.config, arguments.names
    result = launch(worker, config.devices, config, names)[0]
    table = [
        "| schedule | pipesynth (ms) | torch CSV (ms) | ours / torch CSV | torch built-in | built-in (ms) "
        "| ours / built-in |",
        "|---|---|---|---|---|---|---|",
    ]
    medians = []
    for row in result["rows"]:
        times = row["times_s"]
        ours = times["pipesynth"]
        builtin = next((k for k in times if k.startswith("torch Schedule")), None)
        cells = [row["schedule"], f"{statistics.median(ours) * 1e3:.1f}"]
        for label in ("torch CSV", builtin):
            if label not in times:
                cells += ["-", "-", "-"]
                continue
            paired = [a / b for a, b in zip(ours, times[label])]  # step i of each ran back to back
            medians.append(statistics.median(paired))
            if label != "torch CSV":
                cells.append(label.removeprefix("torch "))
            cells += [
                f"{statistics.median(times[label]) * 1e3:.1f}",
                f"{medians[-1]:.3f} ({min(paired):.2f}-{max(paired):.2f})",
            ]
        table.append("| " + " | ".join(cells) + " |")
    skipped = sorted({why for why in [missing(), *(missing(n) for n in names if n in TORCH_EQUIVALENTS)] if why})
    header = config.describe() + [f"Measured tiny-tensor P2P latency (gloo): {result['latency_s'] * 1e6:.0f} us."]
    header += [f'Skipped ("-"): {why}.' for why in skipped]
    summary = [
        f"Ratios: median over steps of ours / torch in the same step round (range in brackets). "
        f"Worst median {max(medians):.3f}, best {min(medians):.3f}, {sum(r <= 1 for r in medians)} of {len(medians)} "
        "comparisons <= 1 (target: all)."
        if medians
        else "No comparison: this torch has neither the CSV runtime nor a built-in twin of these schedules."
    ]
    write_results(arguments.results, header, table, summary)


if __name__ == "__main__":
    main()
