"""The executor's part of `make demo`: plan under a memory cap, draw, train, compare memory with 1F1B.

Planning picks, among the registered generators, the fastest schedule whose
simulated peak stays under the cap (relative to 1F1B on the same model, as
in pipesynth.demo). Then 4 local CPU ranks train the tiny GPT with it, and
1F1B for a couple of steps, and we print per rank the predicted and measured
peak bytes of saved activations for both.
"""

from __future__ import annotations

from pipesynth.demo import generate_all
from pipesynth.errors import PipesynthError
from pipesynth.render import gantt_text, schedule_bars
from pipesynth.runtime.models import GPTConfig
from pipesynth.runtime.train import TrainConfig, run_training
from pipesynth.schedule import Schedule

COST = {"F": 1.0, "B": 1.0, "W": 1.0}


def plan(devices: int, microbatches: int, cap: float) -> tuple[Schedule, Schedule]:
    """The fastest schedule whose peak is at most `cap` x 1F1B's, and 1F1B itself."""
    schedules, _ = generate_all(devices, microbatches, COST)
    baseline = next(s for s in schedules if s.name == "1f1b")
    limit = cap * max(baseline.metrics.peak_memory)
    fitting = [s for s in schedules if max(s.metrics.peak_memory) <= limit + 1e-9]
    if not fitting:
        raise PipesynthError(f"no registered schedule fits {cap:g}x of 1F1B's peak memory")
    return min(fitting, key=lambda s: (s.metrics.makespan, max(s.metrics.peak_memory))), baseline


def memory_lines(name: str, report: dict) -> list[str]:
    return [
        f"  {name:8s} rank {r['rank']}: predicted {r['predicted_peak_bytes'] / 1024:7.1f} KiB, "
        f"measured {r['measured_peak_bytes'] / 1024:7.1f} KiB"
        for r in report["ranks"]
    ]


def run(devices: int = 4, microbatches: int = 8, cap: float = 0.5, steps: int = 30) -> None:
    chosen, baseline = plan(devices, microbatches, cap)
    m = chosen.metrics
    print(
        f"\nPlanned for {devices} ranks under {cap:g}x of 1F1B's activation memory: {chosen.name} "
        f"(makespan {m.makespan:g} vs 1F1B {baseline.metrics.makespan:g}, "
        f"peak {max(m.peak_memory):g} vs {max(baseline.metrics.peak_memory):g})"
    )
    print(gantt_text(schedule_bars(chosen)))
    cfg = TrainConfig(steps=steps, microbatch_size=2, gpt=GPTConfig(), progress=True)
    print(f"\nTraining the tiny GPT with {chosen.name} on {devices} CPU ranks (gloo), {steps} steps:")
    report = run_training(chosen, cfg)
    losses = report["losses"]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print("\n1F1B on the same model, 2 steps, for its memory:")
    base_report = run_training(baseline, TrainConfig(steps=2, microbatch_size=2, gpt=GPTConfig()))
    print("\nPeak activation memory per rank (saved tensors), predicted by the schedule vs measured:")
    for line in memory_lines(chosen.name, report) + memory_lines("1f1b", base_report):
        print(line)
    ours = max(r["measured_peak_bytes"] for r in report["ranks"])
    theirs = max(r["measured_peak_bytes"] for r in base_report["ranks"])
    print(f"largest rank: {chosen.name} {ours / 1024:.1f} KiB = {ours / theirs:.2f}x of 1F1B's {theirs / 1024:.1f} KiB")


if __name__ == "__main__":
    run()
