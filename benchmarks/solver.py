"""Solver benchmark: pipesynth solve against the official V-shape schedules and our own generators.

Rows (V placement, activation 1 per stage, caps in chunk units):

- `anchors`: every instance of benchmarks/anchors/official_v_schedules.json
  (D = 4, 8, 16) at every peak an official schedule reaches, compared with
  the best official schedule at the same or lower peak;
- `d12`: D = 12, m = 48 at the V-Min, V-Half and ZB-V levels (no official
  schedules at D = 12: compared with our generators only);
- `d32`: D = 32, m = 128 at the three levels, equal costs and F,B,W = 3,4,2;
- `d64`: D = 64, m = 256 at the V-Min level, F,B,W = 3,4,2;
- `small`: D = 3, 5 and 6, m = 4D, at the V-Min level, the three unequal
  costs: out of sample for the one-device bound, whose time split was chosen
  on the D = 4 anchor rows.

Every row also holds our handcrafted schedules (v-min, v-half, v-zb, zb-v,
dualpipev: whichever fit the cap) as built inside the same solve (a
generator that misses the solve's hint deadline is absent), the proven lower
bound and the argument that gave it, CP-SAT's own bound, the gap and the
status.

    python benchmarks/solver.py --jobs 1                       # everything, 2-core machine (slow)
    python benchmarks/solver.py --jobs 1 --levels vmin,vhalf --costs 3,4,2 10,12,7 --devices 8 12 16
    python benchmarks/solver.py --jobs 1 --missing             # the rows the results file lacks
    python benchmarks/solver.py --jobs 8                       # 16 cores: 8 solves at once, 2 cores each

Each solve runs with workers=2 and, where the OS allows, pinned to 2 cores,
so its time is what a 2-core machine would see. Rows are written to
benchmarks/results/solver.json as each ends (a later run replaces the rows
it reruns and keeps the others), and solver.md is rebuilt from it, saying
which run each row comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from pipesynth.core.problem import make_problem
from pipesynth.core.validate import find_violations
from pipesynth.solver import solve
from pipesynth.solver.hints import applicable

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT / "benchmarks" / "anchors" / "official_v_schedules.json"
TIME_LIMIT = {3: 30.0, 4: 30.0, 5: 30.0, 6: 45.0, 8: 60.0, 12: 90.0, 16: 120.0, 32: 120.0, 64: 300.0}
LEVELS = {  # cap level -> chunk units at D (docs/design.md section 2)
    "vmin": lambda d: 2 * ((d + 4) // 3),
    "vhalf": lambda d: 2 * ((d + 2) // 2),
    "zbv": lambda d: 2 * d,
}
LEVEL_NAMES = {"vmin": "V-Min", "vhalf": "V-Half", "zbv": "ZB-V"}
HANDCRAFTED = ("v-min", "v-half", "v-zb", "zb-v", "dualpipev")


def pin(slot: int) -> None:
    """Run this worker on 2 cores of its own (Linux), like the 2-core target machine."""
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) >= 2 * (slot + 1):
            os.sched_setaffinity(0, cores[2 * slot : 2 * slot + 2])


def level_of(d: int, cap: float) -> str:
    return next((name for name, f in LEVELS.items() if f(d) == cap), "")


def key(row: dict) -> tuple:
    return (row["p"], row["m"], tuple(row["cost"]), row["comm"], row["cap"])


def solve_task(task: dict) -> dict:
    pin(task["slot"])
    d, m, cost, comm, cap = task["p"], task["m"], task["cost"], task["comm"], task["cap"]
    problem = make_problem(d, m, "v", cost=dict(zip("FBW", cost)), comm=comm, cap=cap)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = solve(problem, time_limit=task["time_limit"], workers=2)
    assert not find_violations(result.schedule)
    starts = result.schedule.provenance["starts"]
    block = result.schedule.provenance.get("block")
    return {
        **{k: task[k] for k in ("set", "p", "m", "cost", "comm", "cap", "time_limit", "run")},
        "makespan": result.makespan,
        "peak": max(result.schedule.metrics.peak_memory),
        "status": result.status,
        "lower_bound": result.lower_bound,
        "bound_argument": result.bound_argument,
        "cp_sat_bound": result.cp_sat_bound,
        "gap": result.gap,
        "seconds": result.seconds,
        "method": result.schedule.provenance["method"],
        "block_T": None if block is None else block["T"],
        "handcrafted": {name: starts[name] for name in HANDCRAFTED if name in starts},
        "applicable": [name for name in HANDCRAFTED if name in applicable(problem)],
        "load_at_start": load,
    }


def tasks_for(anchors: list[dict]) -> list[dict]:
    """Every row of the benchmark (before filters)."""
    out = []
    for inst in anchors:
        for cap in sorted({r["peak_chunks"] for r in inst["results"].values()}):
            out.append({"set": "anchors", **{k: inst[k] for k in ("p", "m", "cost", "comm")}, "cap": cap})
    costs = ([1, 1, 1], 0), ([3, 4, 2], 0), ([10, 12, 7], 1), ([1852, 1809, 934], 60)
    for cost, comm in costs:
        for level in LEVELS:
            out.append({"set": "d12", "p": 12, "m": 48, "cost": cost, "comm": comm, "cap": LEVELS[level](12)})
    for cost, comm in costs[:2]:
        for level in LEVELS:
            out.append({"set": "d32", "p": 32, "m": 128, "cost": cost, "comm": comm, "cap": LEVELS[level](32)})
    out.append({"set": "d64", "p": 64, "m": 256, "cost": [3, 4, 2], "comm": 0, "cap": LEVELS["vmin"](64)})
    for d in (3, 5, 6):
        for cost, comm in costs[1:]:
            out.append({"set": "small", "p": d, "m": 4 * d, "cost": cost, "comm": comm, "cap": LEVELS["vmin"](d)})
    for t in out:
        t["cap"] = float(t["cap"])
    return out


def best_anchor(anchors: list[dict], row: dict) -> tuple[str, float] | None:
    """The best official schedule at the same or lower peak as the row's cap, if the instance has any."""
    inst = next(
        (
            i
            for i in anchors
            if (i["p"], i["m"], list(i["cost"]), i["comm"]) == (*key(row)[:2], list(row["cost"]), row["comm"])
        ),
        None,
    )
    if inst is None:
        return None
    fits = [(r["makespan"], name) for name, r in inst["results"].items() if r["peak_chunks"] <= row["cap"] + 1e-9]
    makespan, name = min(fits)
    return name, makespan


def percent(ours: float, other: float | None) -> str:
    return "-" if other is None else f"{100 * (ours / other - 1):+.1f}%"


def table(rows: list[dict], anchors: list[dict], runs: dict[str, dict]) -> list[str]:
    run_tag = {run: f"r{i + 1}" for i, run in enumerate(sorted(runs))}
    lines = [
        "| D | m | F,B,W | comm | cap | best published (peak <= cap) | best ours | solve | vs published | "
        "vs ours | lower bound | argument | CP-SAT bound | gap | status | seconds | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        anchor = best_anchor(anchors, row)
        hand = row["handcrafted"]
        best_hand = min(hand.items(), key=lambda kv: kv[1]) if hand else None
        level = LEVEL_NAMES.get(level_of(row["p"], row["cap"]), "")
        cp = row["cp_sat_bound"]
        lines.append(
            f"| {row['p']} | {row['m']} | {','.join(str(c) for c in row['cost'])} | {row['comm']} "
            f"| {level} {row['cap']:g} | {'-' if anchor is None else f'{anchor[0]} {anchor[1]:g}'} "
            f"| {'-' if best_hand is None else f'{best_hand[0]} {best_hand[1]:g}'} | {row['makespan']:g} "
            f"| {percent(row['makespan'], None if anchor is None else anchor[1])} "
            f"| {percent(row['makespan'], None if best_hand is None else best_hand[1])} "
            f"| {row['lower_bound']:g} | {row['bound_argument']} | {'-' if cp is None else f'{cp:g}'} "
            f"| {100 * row['gap']:.1f}% | {row['status']} | {row['seconds']:.0f} | {run_tag[row['run']]} |"
        )
    return lines


def versus_each(rows: list[dict]) -> list[str]:
    """Solve against each handcrafted schedule, row by row (absent: did not fit the cap or did not arrive)."""
    lines = [
        "| D | F,B,W | comm | cap | " + " | ".join(HANDCRAFTED) + " |",
        "|---|---|---|---|" + "---|" * len(HANDCRAFTED),
    ]
    for row in rows:
        cells = []
        for name in HANDCRAFTED:
            if name in row["handcrafted"]:
                cells.append(f"{row['handcrafted'][name]:g} ({percent(row['makespan'], row['handcrafted'][name])})")
            else:
                cells.append("n/a" if name not in row.get("applicable", HANDCRAFTED) else "-")
        level = LEVEL_NAMES.get(level_of(row["p"], row["cap"]), "")
        lines.append(
            f"| {row['p']} | {','.join(str(c) for c in row['cost'])} | {row['comm']} | {level} {row['cap']:g} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def write(out: Path, data: dict, anchors: list[dict]) -> str:
    rows = sorted(data["rows"], key=lambda r: (r["cost"] != [1, 1, 1], r["comm"], r["cost"], r["p"], r["cap"]))
    data["rows"] = rows
    out.mkdir(parents=True, exist_ok=True)
    (out / "solver.json").write_text(json.dumps(data, indent=1))
    runs = data["runs"]
    worse = [r for r in rows if (a := best_anchor(anchors, r)) is not None and r["makespan"] > a[1] + 1e-9]
    worse_ours = [r for r in rows if r["handcrafted"] and r["makespan"] > min(r["handcrafted"].values()) + 1e-9]
    run_tag = {run: f"r{i + 1}" for i, run in enumerate(sorted(runs))}
    lines = [
        "# Solver benchmark",
        "",
        "Runs (each row says which one it comes from; rows of a run still going are written as they end):",
        "",
        *(
            f"- {run_tag[run]}: `{info['command']}` at commit {info.get('commit', '?')} "
            f"({info['host']}, {info['cores']} cores; each solve pinned to 2 "
            f"cores, workers=2; started {info['started']}, load average {info['load_start']} at the start"
            + (f", {info['load_end']} at the end, total {info['seconds']:.0f} s" if "seconds" in info else ", running")
            + (f"; {n} rows)" if (n := sum(1 for r in rows if r["run"] == run)) else "; every row rerun later)")
            for run, info in sorted(runs.items())
        ),
        "",
        "`cap` in chunk units (activation 1 per stage), with its level; `best published`: the best official",
        "schedule (benchmarks/anchors/official_v_schedules.json) at the same or lower peak (`-`: none at this D);",
        "`best ours`: the best of our handcrafted generators that fit the cap, built inside the same solve;",
        "`lower bound`: proven for every schedule, `argument` the one that gave it (docs/design.md section 4),",
        "`CP-SAT bound`: the full model's own bound (`-`: the polish did not run), `gap` = (solve - bound) / solve;",
        "`seconds`: the solve end to end, under its time limit "
        f"({', '.join(f'D={d}: {t:g} s' for d, t in TIME_LIMIT.items())}). Timings on a shared machine are noisy.",
        "",
        *table(rows, anchors, runs),
        "",
        f"Rows where solve is worse than the best published schedule at the same or lower peak: {len(worse)}.",
        f"Rows where solve is worse than one of our handcrafted schedules built in the same solve: {len(worse_ours)}.",
        "",
        "## Against each handcrafted schedule",
        "",
        "Makespan of each generator's schedule inside the same solve and solve's difference to it;",
        "`-`: did not fit the cap or missed the solve's hint deadline; `n/a`: not in this tree.",
        "",
        *versus_each(rows),
        "",
    ]
    text = "\n".join(lines)
    (out / "solver.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1, help="solves at once (2 cores each)")
    parser.add_argument("--sets", nargs="*", default=["anchors", "d12", "d32", "d64", "small"], help="row sets to run")
    parser.add_argument("--devices", nargs="*", type=int, help="only these D")
    parser.add_argument("--levels", help="only caps at these levels, e.g. vmin,vhalf (anchors: their own caps)")
    parser.add_argument("--costs", nargs="*", help="only these F,B,W, e.g. 3,4,2 10,12,7")
    parser.add_argument("--fresh", action="store_true", help="drop the rows of earlier runs")
    parser.add_argument("--missing", action="store_true", help="only rows the results file does not have yet")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    anchors = json.loads(ANCHORS.read_text())["instances"]
    tasks = [t for t in tasks_for(anchors) if t["set"] in args.sets]
    if args.devices:
        tasks = [t for t in tasks if t["p"] in args.devices]
    if args.levels:
        wanted = args.levels.split(",")
        tasks = [t for t in tasks if level_of(t["p"], t["cap"]) in wanted]
    if args.costs:
        wanted_costs = [[int(c) for c in spec.split(",")] for spec in args.costs]
        tasks = [t for t in tasks if t["cost"] in wanted_costs]
    path = args.out / "solver.json"
    data = {"rows": [], "runs": {}}
    if path.exists() and not args.fresh:
        old = json.loads(path.read_text())
        if "runs" in old:  # rows of earlier runs in this format are kept
            data = old
    if args.missing:
        done = {key(r) for r in data["rows"]}
        tasks = [t for t in tasks if key(t) not in done]
    run = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = lambda: ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"  # noqa: E731
    data["runs"][run] = {
        "command": "python benchmarks/solver.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "host": platform.node() or "host",
        "cores": os.cpu_count(),
        "started": run,
        "load_start": load(),
    }
    rerun = {key(t) for t in tasks}
    data["rows"] = [r for r in data["rows"] if key(r) not in rerun]
    started = time.monotonic()
    for i, t in enumerate(tasks):
        t.update(slot=i % args.jobs, run=run, time_limit=TIME_LIMIT[t["p"]])
    tasks.sort(key=lambda t: -t["time_limit"] if args.jobs > 1 else 0)  # longest first packs a pool tightly
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for future in as_completed([pool.submit(solve_task, t) for t in tasks]):
            data["rows"].append(future.result())
            write(args.out, data, anchors)
    data["runs"][run].update(load_end=load(), seconds=time.monotonic() - started)
    print(write(args.out, data, anchors))


if __name__ == "__main__":
    main()
