"""`make demo`: every registered schedule for 4 devices and 8 microbatches, side by side.

Each step is a small function so later parts (the executor, the solver)
can add their own step to `main`. Every schedule runs the same model: a
placement with k stages per device cuts each device's share into k stages
of 1/k of its costs and activation, so makespans and peaks compare across
placements (memory unit: one microbatch's activation of a whole device).
"""

from __future__ import annotations

from pathlib import Path

from pipesynth.errors import PipesynthError
from pipesynth.generators import GENERATORS, generate, problem_for
from pipesynth.render import gantt_figure, gantt_text, schedule_bars
from pipesynth.schedule import Schedule

DEVICES = 4
MICROBATCHES = 8
CHUNKS = 2
BASELINE = "1f1b"
OUT = Path("out")


def generate_all(devices: int, microbatches: int, cost: dict[str, float]) -> tuple[list[Schedule], list[str]]:
    """One schedule per registered generator, and a note for each that cannot run this case."""
    schedules, skipped = [], []
    for name in GENERATORS:
        try:
            problem = problem_for(name, devices, microbatches, chunks=CHUNKS)
            k = problem.stages / devices
            per_stage = {op: c / k for op, c in cost.items()}
            schedules.append(generate(name, devices, microbatches, chunks=CHUNKS, cost=per_stage, activation=1 / k))
        except PipesynthError as err:
            skipped.append(f"{name}: {err}")
    return schedules, skipped


def metrics_table(schedules: list[Schedule], baseline: str = BASELINE) -> str:
    """Makespan, bubble rate and peak memory, each also relative to the baseline's."""
    base = next((s for s in schedules if s.name == baseline), schedules[0])
    width = max(len(s.name) for s in schedules)
    lines = [
        f"{'schedule'.ljust(width)}  makespan  vs {baseline}  bubble rate  peak memory  vs {baseline}",
    ]
    for s in schedules:
        m, b = s.metrics, base.metrics
        peak, base_peak = max(m.peak_memory), max(b.peak_memory)
        lines.append(
            f"{s.name.ljust(width)}  {m.makespan:8g}  {m.makespan / b.makespan:6.2f}x  {m.bubble_rate:11.1%}"
            f"  {peak:11g}  {peak / base_peak:6.2f}x"
        )
    return "\n".join(lines)


def compare(cost: dict[str, float]) -> list[Schedule]:
    """Print the side-by-side table for one set of pass costs."""
    costs = ", ".join(f"{op}={c:g}" for op, c in cost.items())
    print(f"\n{DEVICES} devices, {MICROBATCHES} microbatches, costs {costs}, comm 0:")
    schedules, skipped = generate_all(DEVICES, MICROBATCHES, cost)
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


def train() -> None:
    """Plan under a memory cap, train the tiny GPT with it on 4 CPU ranks (needs torch: imported here)."""
    try:
        from pipesynth.runtime import demo
    except ImportError as err:
        print(f"\n(skipping the training demo: {err})")
        return
    demo.run(DEVICES, MICROBATCHES)


def main() -> None:
    compare({"F": 1, "B": 1, "W": 1})
    schedules = compare({"F": 3, "B": 4, "W": 2})
    best = min(schedules, key=lambda s: s.metrics.makespan)
    print(f"picture written to {draw(best)}")
    train()


if __name__ == "__main__":
    main()
