"""`pipesynth demo` (`make demo`): every registered schedule side by side, then one trained on CPU ranks.

Every schedule runs the same model, as in `pipesynth pareto`
(pipesynth.analysis.pareto, docs/design.md section 2): 2D chunks with the
given pass costs and one chunk unit of activation each; a V stage is one
chunk, a linear stage two. So the V-Half row shows what `pipesynth schedule
v-half` prints, and the 1F1B row what `pipesynth schedule 1f1b --cost
F=2,B=2,W=2 --activation 2` prints. The training step picks the
fastest schedule under a memory cap relative to 1F1B's, trains the tiny GPT
with it on 4 CPU ranks (gloo), and prints predicted and measured peak
activation bytes per rank next to 1F1B's. It needs torch, imported there
only: the rest of the demo runs without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipesynth.analysis.pareto import same_model_schedules
from pipesynth.analysis.render import gantt_figure, gantt_text, schedule_bars
from pipesynth.cli import command
from pipesynth.core.schedule import Schedule
from pipesynth.errors import PipesynthError

DEVICES = 4
MICROBATCHES = 8
CHUNKS = 2
BASELINE = "1f1b"
EQUAL_COST = {"F": 1.0, "B": 1.0, "W": 1.0}
OUT = Path("out")


def metrics_table(schedules: list[Schedule], baseline: str = BASELINE) -> str:
    """Makespan, bubble rate and peak memory, each also relative to the baseline's."""
    base = next((s for s in schedules if s.name == baseline), schedules[0])
    width = max(len(s.name) for s in schedules)
    lines = [
        f"{'schedule'.ljust(width)}  makespan  vs {baseline}  bubble rate  peak (chunk units)  vs {baseline}",
    ]
    for s in schedules:
        m, b = s.metrics, base.metrics
        peak, base_peak = max(m.peak_memory), max(b.peak_memory)
        lines.append(
            f"{s.name.ljust(width)}  {m.makespan:8g}  {m.makespan / b.makespan:6.2f}x  {m.bubble_rate:11.1%}"
            f"  {peak:17g}  {peak / base_peak:6.2f}x"
        )
    return "\n".join(lines)


def compare(cost: dict[str, float]) -> list[Schedule]:
    """Print the side-by-side table for one set of pass costs."""
    costs = ", ".join(f"{op}={c:g}" for op, c in cost.items())
    print(f"\n{DEVICES} devices, {MICROBATCHES} microbatches, {2 * DEVICES} chunks of {costs}, comm 0:")
    schedules, skipped = same_model_schedules(DEVICES, MICROBATCHES, cost, chunks=CHUNKS)
    print(metrics_table(schedules))
    for note in skipped:
        print(f"  (skipped {note})")
    return schedules


def draw(schedule: Schedule, out_dir: Path = OUT) -> Path:
    """Print the schedule as a terminal Gantt chart and save it as a PNG."""
    rows = schedule_bars(schedule)
    p = schedule.problem
    print(f"\n{schedule.name} (makespan {schedule.metrics.makespan:g}):")
    print(gantt_text(rows))
    title = f"{schedule.name}: {p.devices} devices, {p.microbatches} microbatches"
    return gantt_figure(rows, out_dir / f"{schedule.name}-d{p.devices}-m{p.microbatches}.png", title=title)


def fastest_under(devices: int, microbatches: int, cap: float) -> tuple[Schedule, Schedule]:
    """The fastest schedule whose peak is at most `cap` x 1F1B's, and 1F1B itself."""
    schedules, _ = same_model_schedules(devices, microbatches, EQUAL_COST, chunks=CHUNKS)
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


def train(devices: int = DEVICES, microbatches: int = MICROBATCHES, cap: float = 0.5, steps: int = 30) -> None:
    """Plan under `cap` x 1F1B's activation memory, train the tiny GPT with it on CPU ranks."""
    try:  # torch only for this step
        from pipesynth.runtime.models import GPTConfig
        from pipesynth.runtime.train import TrainConfig, run_training
    except ImportError as err:
        print(f"\n(skipping the training demo: {err})")
        return
    chosen, baseline = fastest_under(devices, microbatches, cap)
    m = chosen.metrics
    print(
        f"\nPlanned for {devices} ranks under {cap:g}x of 1F1B's activation memory: {chosen.name} "
        f"(makespan {m.makespan:g} vs 1F1B {baseline.metrics.makespan:g}, "
        f"peak {max(m.peak_memory):g} vs {max(baseline.metrics.peak_memory):g} chunk units)"
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


def main(training: bool = True) -> None:
    compare({"F": 1, "B": 1, "W": 1})
    schedules = compare({"F": 3, "B": 4, "W": 2})
    best = min(schedules, key=lambda s: s.metrics.makespan)
    print(f"picture written to {draw(best)}")
    if training:
        train()


@command()
def demo(
    training: Annotated[bool, typer.Option("--train/--no-train", help="End by training on 4 CPU ranks.")] = True,
) -> None:
    """Compare every schedule, draw the fastest, train one.

    4 devices, 8 microbatches; the training needs torch (30 steps, 4 CPU ranks).
    Example: pipesynth demo --no-train
    """
    main(training)
