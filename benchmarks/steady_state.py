"""Where deep, tightly capped schedules lose time: how fast microbatches flow in the steady state.

At the V-Min-level cap the gap between the schedules and the lower bounds
at D >= 12 is about the steady state (docs/benchmarks.md): the bounds grow
by a device's work per microbatch, the schedules by more. This measures by
how much, and why, on the handcrafted starts (v-min, v-half) and on what
`solve` returns within the solver benchmark's time limit (or `--time-limit`).
V placement, m = 4D, over the middle half of the microbatches (m/4 to 3m/4):

- `admit`: time per microbatch between the starts of F of stage 0;
- `lifespan`: how long stage 0's activation is held on device 0 (from its
  F's start to the end of the pass that frees it), mean; `least`: one
  microbatch's chain between them, the shortest possible; `waits` = lifespan
  - least, time the microbatch spent waiting on its way down and back up,
  and `down` the part of it before F of the last stage (the forward path);
- `held`: device 0's mean memory in the steady state, (lifespan of stage 0
  + lifespan of stage 2D-1) / admit, in chunk units, against its cap.

References printed with each row: `work`, a device's work per microbatch
(no schedule admits faster), and `memory`, device 0's least lifespans over
its cap (no schedule whose microbatches never wait admits faster).

    python -m benchmarks.steady_state                            # every row
    python -m benchmarks.steady_state --rows 16:3,4,2 --time-limit 600

Rows are added to (or replace those with the same D, costs and time limit
in) benchmarks/results/steady_state.json; steady_state.md is rebuilt from it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.records import ROOT, open_results, run_lines, store_row
from benchmarks.solver import LEVELS, TIME_LIMIT
from pipesynth.construct import get_generator
from pipesynth.core.problem import Problem, make_problem
from pipesynth.core.rules import freeing_pass
from pipesynth.core.schedule import Schedule
from pipesynth.core.validate import find_violations
from pipesynth.solver import solve
from pipesynth.solver.one_device import device_lags

# (D, (F, B, W), comm)
ROWS = [
    (8, (3, 4, 2), 0),
    (12, (3, 4, 2), 0),
    (16, (3, 4, 2), 0),
    (12, (10, 12, 7), 1),
    (16, (10, 12, 7), 1),
]
STARTS = ("v-min", "v-half")


def lifespans(schedule: Schedule, stage: int) -> dict[int, float]:
    """Microbatch -> how long `stage`'s activation is held: its F's start to its freeing pass's end."""
    free = freeing_pass(schedule.problem)
    device = schedule.actions[schedule.problem.placement[stage]]
    born = {a.mb: a.start for a in device if (a.op, a.stage) == ("F", stage)}
    return {a.mb: a.end - born[a.mb] for a in device if (a.op, a.stage) == (free, stage)}


def least_lag(problem: Problem, a: tuple[str, int], b: tuple[str, int]) -> float:
    """One microbatch's shortest time from the start of pass a to the start of pass b (both on one device)."""
    return problem.cost(*a) + device_lags(problem, problem.placement[a[1]])[(a, b)]


def least_lifespan(problem: Problem, stage: int) -> float:
    """One microbatch's shortest time from `stage`'s F start to its freeing pass's end."""
    free = freeing_pass(problem)
    return least_lag(problem, ("F", stage), (free, stage)) + problem.cost(free, stage)


def measure(label: str, schedule: Schedule) -> dict:
    """The row's figures for one schedule (see the module docstring)."""
    assert not find_violations(schedule), label
    p = schedule.problem
    m, last = p.microbatches, p.stages - 1
    middle = range(m // 4, 3 * m // 4)
    admitted = {a.mb: a.start for a in schedule.actions[0] if (a.op, a.stage) == ("F", 0)}
    admit = (admitted[middle[-1] + 1] - admitted[middle[0]]) / len(middle)
    first, other = lifespans(schedule, 0), lifespans(schedule, last)
    lifespan = statistics.mean(first[j] for j in middle)
    turned = {a.mb: a.start for a in schedule.actions[0] if (a.op, a.stage) == ("F", last)}
    down = statistics.mean(turned[j] - admitted[j] for j in middle) - least_lag(p, ("F", 0), ("F", last))
    return {
        "schedule": label,
        "makespan": schedule.metrics.makespan,
        "admit": admit,
        "lifespan": lifespan,
        "waits": lifespan - least_lifespan(p, 0),
        "down": down,
        "held": (lifespan + statistics.mean(other[j] for j in middle)) / admit,
    }


def render(data: dict) -> str:
    lines = [
        "# The steady state of deep schedules at the V-Min-level cap",
        "",
        "Runs:",
        "",
        *run_lines(data["runs"]),
        "",
        "V placement, m = 4D, cap at the V-Min level in chunk units; figures over the middle half of the "
        "microbatches (benchmarks/steady_state.py says how each is measured). `work`: a device's work per "
        "microbatch; `memory`: device 0's least lifespans over its cap; `solve` ran within `limit` seconds.",
        "",
        "| D | F,B,W | comm | cap | work | memory | limit | schedule | makespan | admit | lifespan (least) "
        "| waits (down) | held | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(data["rows"], key=lambda r: (r["cost"], r["D"], r["time_limit"])):
        for s in r["schedules"]:
            lines.append(
                f"| {r['D']} | {','.join(map(str, r['cost']))} | {r['comm']} | {r['cap']} | {r['work']:g} "
                f"| {r['memory']:.1f} | {r['time_limit']:g} | {s['schedule']} | {s['makespan']:g} | {s['admit']:.1f} "
                f"| {s['lifespan']:.0f} ({r['least']:g}) | {s['waits']:.0f} ({s['down']:.0f}) | {s['held']:.1f} "
                f"| {r['run']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", help="only these rows, as D:F,B,W (e.g. 16:3,4,2)")
    parser.add_argument("--time-limit", type=float, help="solve's limit (default: the solver benchmark's for D)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.rows or f"{r[0]}:{','.join(map(str, r[1]))}" in args.rows]
    path = args.out / "steady_state.json"
    data, tag = open_results(path, "benchmarks.steady_state")
    for d, cost, comm in rows:
        cap = LEVELS["vmin"](d)
        problem = make_problem(d, 4 * d, "v", cost=dict(zip("FBW", cost)), comm=comm, cap=cap)
        limit = args.time_limit or TIME_LIMIT[d]
        schedules = [measure(name, get_generator(name).build(problem)) for name in STARTS]
        schedules.append(measure("solve", solve(problem, time_limit=limit, workers=2).schedule))
        mine = problem.stages_on(0)
        row = {
            "D": d,
            "cost": list(cost),
            "comm": comm,
            "cap": cap,
            "time_limit": limit,
            "work": sum(problem.cost(op, s) for s in mine for op in problem.ops),
            "memory": sum(least_lifespan(problem, s) for s in mine) / cap,
            "least": least_lifespan(problem, 0),
            "schedules": schedules,
            "run": tag,
        }
        store_row(path, data, row, lambda r: (r["D"], r["cost"], r["comm"], r["time_limit"]), render)
        print(f"D={d} {cost}: solve {schedules[-1]['makespan']:g}, admit {schedules[-1]['admit']:.1f}", flush=True)


if __name__ == "__main__":
    main()
