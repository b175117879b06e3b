"""Regenerate the solved schedule files in schedules/ and their index (`make schedules`).

V placement, equal costs, D in 2, 4, 8; m in 2D, 4D, 8D; caps 1/3, 1/2 and 1
times 1F1B's peak, or the smallest feasible cap where the requested one is
below it (recorded as such). Deterministic mode (one CP-SAT worker, budgets
in deterministic time), two solves at a time: a rerun writes the same bytes.
Wall-clock seconds go to schedules/solved.log (not committed), not to the files.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipesynth.core.problem import make_problem, parse_cap
from pipesynth.formats.files import write_text_atomic
from pipesynth.formats.schedule_json import save
from pipesynth.solver import SolveResult, smallest_feasible_cap, solve

HERE = Path(__file__).resolve().parent
CAPS = (("1/3x", 1 / 3), ("1/2x", 1 / 2), ("1x", 1.0))
TIME_LIMIT = {2: 10.0, 4: 20.0, 8: 10.0}  # deterministic seconds; D <= 4 ends proven optimal well within


def task(d: int, m: int, label: str, factor: float) -> tuple[str, int, int, str, float, SolveResult]:
    problem = make_problem(d, m, "v")
    cap = parse_cap(f"{factor}x", problem)
    least = smallest_feasible_cap(problem)
    raised = any(c < lo for c, lo in zip(cap, least))
    if raised:
        cap = least
    result = solve(problem.with_cap(cap), time_limit=TIME_LIMIT[d], workers=1, deterministic=True)
    schedule = result.schedule
    del schedule.provenance["seconds"]  # wall clock: in the log, so reruns are byte-identical
    schedule.provenance["cap_requested"] = label
    if raised:
        schedule.provenance["cap_note"] = f"{label} is below the smallest feasible cap; solved at it"
    tag = "min" if raised else label.replace("/", "_")
    name = f"solved-v-d{d}-m{m}-cap{tag}.json"
    save(schedule, HERE / name)
    return name, d, m, label, cap[0], result


def main() -> None:
    started = time.monotonic()
    jobs = [(d, m, label, factor) for d in (2, 4, 8) for m in (2 * d, 4 * d, 8 * d) for label, factor in CAPS]
    with ProcessPoolExecutor(max_workers=2) as pool:
        rows = list(pool.map(task, *zip(*jobs)))
    log = []
    for name, _d, _m, _label, _cap, r in rows:
        log.append(f"{name}: makespan {r.makespan:g} ({r.status}, bound {r.lower_bound:g}), {r.seconds:.1f} s")
        print(log[-1], flush=True)
    log.append(f"total {time.monotonic() - started:.0f} s")
    print(log[-1])
    write_text_atomic(HERE / "solved.log", "\n".join(log) + "\n")
    lines = [
        "# Solved schedules",
        "",
        "Made by `make schedules` (`python schedules/solved.py`): `pipesynth solve` in deterministic mode,",
        "V placement, F = B = W = 1, comm 0, activation 1 per stage (caps in chunk units; 1x = 1F1B's peak = 2D).",
        "A cap marked `min` was raised to the smallest feasible cap (one microbatch on every stage of a device).",
        "`bound from`: the argument that proves the lower bound (docs/design.md section 4, Lower bounds);",
        "`optimal` means the makespan equals it. Seconds per file: schedules/solved.log (not committed).",
        "",
        "| file | D | m | cap asked | cap used | makespan | bubble | peak | lower bound | bound from | gap | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d, m, label, cap, r in rows:
        s = r.schedule
        lines.append(
            f"| [{name}]({name}) | {d} | {m} | {label} | {cap:g} | {r.makespan:g} | {s.metrics.bubble_rate:.4f} "
            f"| {max(s.metrics.peak_memory):g} | {r.lower_bound:g} | {r.bound_argument} | {100 * r.gap:.1f}% "
            f"| {r.status} |"
        )
    readme = HERE / "README.md"
    old = readme.read_text() if readme.exists() else ""
    keep = old.split("# Solved schedules")[0].rstrip()
    write_text_atomic(readme, (keep + "\n\n" if keep else "") + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
