"""Bound benchmark: every lower-bound argument and the proven gap of pipesynth solve.

For every instance of benchmarks/anchors/official_v_schedules.json (D = 4, 8,
16) at the caps its published schedules reach (the V-Min, V-Half and ZB-V
levels), the value of each argument of `pipesynth.solver.bounds.lower_bound`,
the best of them, CP-SAT's own bound, and solve's makespan, status and proven
gap; then the small problems of schedules/solved.py (D <= 4, m <= 16, every
cap) with their status and seconds.

    python benchmarks/bounds.py                 # 30/60/120 s for D = 4/8/16, 2 workers
    python benchmarks/bounds.py --scale 0.5     # half the time limits
    python benchmarks/bounds.py --render        # rewrite bounds.md from bounds.json

Writes benchmarks/results/bounds.md and bounds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from pipesynth.core.problem import make_problem, parse_cap
from pipesynth.core.validate import find_violations
from pipesynth.solver import solve
from pipesynth.solver.bounds import ARGUMENTS, lower_bound, smallest_feasible_cap

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT / "benchmarks" / "anchors" / "official_v_schedules.json"
TIME_LIMIT = {4: 30.0, 8: 60.0, 16: 120.0}
LEVELS = ("V-Min", "V-Half", "ZB-V")  # the published schedules' peaks, smallest first
SMALL_LIMIT = 30.0


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(problem, time_limit: float) -> dict:
    started = time.monotonic()
    bound = lower_bound(problem)
    bound_seconds = time.monotonic() - started
    result = solve(problem, time_limit=time_limit, workers=2)
    assert not find_violations(result.schedule)
    assert bound.value <= result.makespan + 1e-9
    return {
        "arguments": bound.by_argument,
        "bound": bound.value,
        "bound_argument": bound.argument,
        "bound_seconds": round(bound_seconds, 2),
        "cp_sat_bound": result.cp_sat_bound,
        "lower_bound": result.lower_bound,
        "proof": result.bound_argument,
        "makespan": result.makespan,
        "status": result.status,
        "gap": result.gap,
        "seconds": result.seconds,
    }


def anchor_rows(max_devices: int, scale: float) -> list[dict]:
    rows = []
    for inst in json.loads(ANCHORS.read_text())["instances"]:
        d = inst["p"]
        if d > max_devices:
            continue
        for level, cap in zip(LEVELS, sorted({r["peak_chunks"] for r in inst["results"].values()})):
            problem = make_problem(d, inst["m"], "v", cost=dict(zip("FBW", inst["cost"])), comm=inst["comm"], cap=cap)
            published = min(r["makespan"] for r in inst["results"].values() if r["peak_chunks"] <= cap + 1e-9)
            row = {"D": d, "m": inst["m"], "cost": inst["cost"], "comm": inst["comm"], "level": level, "cap": cap}
            rows.append({**row, "published": published, **measure(problem, TIME_LIMIT[d] * scale)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def small_rows(scale: float) -> list[dict]:
    rows = []
    for d in (2, 4):
        for m in (2 * d, 4 * d, 8 * d):
            if m > 16:
                continue
            for label in ("1/3x", "1/2x", "1x"):
                problem = make_problem(d, m, "v")
                factor = {"1/3x": 1 / 3, "1/2x": 0.5, "1x": 1.0}[label]
                cap = parse_cap(f"{factor}x", problem)
                cap = tuple(max(c, least) for c, least in zip(cap, smallest_feasible_cap(problem)))
                row = {"D": d, "m": m, "cap asked": label, "cap": cap[0]}
                rows.append({**row, **measure(problem.with_cap(cap), SMALL_LIMIT * scale)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every time limit")
    parser.add_argument("--max-devices", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--render", action="store_true", help="rewrite bounds.md from bounds.json, solving nothing")
    args = parser.parse_args()
    if args.render:
        run = json.loads((args.out / "bounds.json").read_text())
    else:
        started, load_before = time.monotonic(), load()
        anchors = anchor_rows(args.max_devices, args.scale)
        small = small_rows(args.scale)
        run = {
            "command": f"python benchmarks/bounds.py{'' if args.scale == 1 else f' --scale {args.scale:g}'}",
            "machine": f"{platform.node() or 'host'}, {os.cpu_count()} cores shared with other jobs; "
            f"{load_before} at the start, {load()} at the end; total {time.monotonic() - started:.0f} s",
            "limits": ", ".join(f"D={d}: {t * args.scale:g} s" for d, t in TIME_LIMIT.items()),
            "small_limit": SMALL_LIMIT * args.scale,
            "anchors": anchors,
            "small": small,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bounds.json").write_text(json.dumps(run, indent=1))
    text = render(run)
    (args.out / "bounds.md").write_text(text)
    print(text)


def render(run: dict) -> str:
    anchors, small = run["anchors"], run["small"]
    short = {
        "critical path": "cp",
        "work": "work",
        "in-flight": "in-flight",
        "memory ramp": "ramp",
        "memory area": "area",
    }
    lines = [
        "# Lower bounds and proven gaps",
        "",
        f"Command: `{run['command']}` ({run['machine']}). Each solve: workers=2, time limit {run['limits']};"
        f" small problems {run['small_limit']:g} s.",
        "",
        "Arguments (docs/design.md section 4, Lower bounds), each valid for every schedule of the problem:",
        "`cp` critical path, `work` Jackson's bound per device, `in-flight` the same with the cap's rules,",
        "`ramp` memory ramp (warm-up and cool-down), `area` memory area (Little's law).",
        "`best` is the best of them (and which), `CP-SAT` the full model's own bound (`-`: not run, e.g. the start",
        "already met the bound); the model has `best` as a constraint, so its bound starts there and only a",
        "larger value is CP-SAT's own progress. `proof` what the final lower bound came from. `published`: the",
        "best official schedule at the same or lower peak. Caps in chunk units; F,B,W and comm in time units.",
        "",
        "| D | m | F,B,W | comm | cap | " + " | ".join(short[a] for a in ARGUMENTS) + " | best | CP-SAT | solve "
        "| status | lower bound | proof | gap | published | seconds |",
        "|" + "---|" * (14 + len(ARGUMENTS)),
    ]
    for r in anchors:
        args_cells = " | ".join(fmt(r["arguments"].get(a)) for a in ARGUMENTS)
        lines.append(
            f"| {r['D']} | {r['m']} | {','.join(map(str, r['cost']))} | {r['comm']} | {r['level']} {r['cap']:g} "
            f"| {args_cells} | {r['bound']:g} ({short[r['bound_argument']]}) | {fmt(r['cp_sat_bound'])} "
            f"| {r['makespan']:g} | {r['status']} | {r['lower_bound']:g} | {r['proof']} | {100 * r['gap']:.1f}% "
            f"| {r['published']:g} | {r['seconds']:.0f} |"
        )
    unequal = [r for r in anchors if r["cost"] != [1, 1, 1]]
    devices = sorted({r["D"] for r in anchors})
    lines += ["", "Largest proven gap with unequal costs, per D and cap level:", ""]
    lines += ["| cap level | " + " | ".join(f"D={d}" for d in devices) + " |", "|---|" + "---|" * len(devices)]
    for level in LEVELS:
        cells = []
        for d in devices:
            gaps = [r["gap"] for r in unequal if r["D"] == d and r["level"] == level]
            cells.append(f"{100 * max(gaps):.1f}%" if gaps else "-")
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Small problems (schedules/solved.py: V placement, F = B = W = 1, D <= 4, m <= 16, every cap)",
        "",
        "| D | m | cap asked | cap used | makespan | status | lower bound | proof | gap | bound seconds | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in small:
        lines.append(
            f"| {r['D']} | {r['m']} | {r['cap asked']} | {r['cap']:g} | {r['makespan']:g} | {r['status']} "
            f"| {r['lower_bound']:g} | {r['proof']} | {100 * r['gap']:.1f}% | {r['bound_seconds']:.2f} "
            f"| {r['seconds']:.1f} |"
        )
    optimal = sum(r["status"] == "optimal" for r in small)
    lines += ["", f"{optimal} of {len(small)} small problems end proven optimal.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
