"""Steady states with more than one microbatch per period: do they beat one-microbatch blocks?

The block model (`pipesynth.solver.block.solve_block`) at a fixed interval
T, with k microbatches per period (`per_block`): k = 1 is the solver's block
search; k = 2 lets the two microbatches of a period take different offsets.
For each row: whether a block exists (CP-SAT's status within the time
limit), and where one does, the plain repeat of it for m = 4D microbatches,
validated. V placement, V-Min-level cap, F,B,W = 3,4,2, 2 workers. Blocks
are at most one microbatch's chain plus 4 periods long (tighter than the
solver's own horizon), so `infeasible` means no block of that length.

    python -m benchmarks.multi_block                 # every row, 300 s each at most
    python -m benchmarks.multi_block --time-limit 60
    python -m benchmarks.multi_block --rows 12:2:47 --seed 1   # one row (D:k:T), CP-SAT seed 1

Rows are added to (or replace those of the same seed in) benchmarks/results/multi_block.json,
with each found block's offsets, so a claim can be checked by repeating and
validating the block; multi_block.md is rebuilt from it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.records import ROOT, open_results, run_lines, store_row
from pipesynth.core.problem import make_problem
from pipesynth.core.validate import find_violations
from pipesynth.solver.block import chain_length, repeat_block, solve_block
from pipesynth.solver.progress import SolverParams
from pipesynth.solver.scaled import Scaled

# (D, cap in chunk units, microbatches per period, interval T)
ROWS = [
    (4, 4, 1, 20),
    (4, 4, 1, 21),
    (4, 4, 2, 40),
    (4, 4, 2, 41),
    (12, 10, 1, 23),
    (12, 10, 1, 24),
    (12, 10, 2, 47),
    (16, 12, 1, 24),
    (16, 12, 2, 47),
]


def render(data: dict) -> str:
    lines = [
        "# Blocks with one and two microbatches per period",
        "",
        "Runs:",
        "",
        *run_lines(data["runs"]),
        "",
        "V placement, F,B,W = 3,4,2, cap at the V-Min level in chunk units; blocks at most one microbatch's "
        "chain plus 4T long; `per microbatch` = T / k; `repeat`: the plain repeat for m = 4D microbatches "
        "(no reorder), validated; found blocks' offsets are in multi_block.json.",
        "",
        "| D | cap | k | T | per microbatch | status | seconds | seed | repeat (m = 4D) | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(data["rows"], key=lambda r: (r["D"], r["k"], r["T"], r["seed"])):
        lines.append(
            f"| {r['D']} | {r['cap']} | {r['k']} | {r['T']} | {r['T'] / r['k']:g} | {r['status']} "
            f"| {r['seconds']:.0f} | {r['seed']} | {'-' if r['repeat'] is None else format(r['repeat'], 'g')} "
            f"| {r['run']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--rows", nargs="*", help="only these rows, as D:k:T")
    parser.add_argument("--seed", type=int, default=0, help="CP-SAT's random seed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.rows or f"{r[0]}:{r[2]}:{r[3]}" in args.rows]
    path = args.out / "multi_block.json"
    data, tag = open_results(path, "benchmarks.multi_block")
    for d, cap, k, T in rows:
        problem = make_problem(d, 4 * d, "v", cost={"F": 3, "B": 4, "W": 2}, cap=cap)
        scaled = Scaled.of(problem)
        chain = chain_length(scaled)
        started = time.monotonic()
        result = solve_block(
            scaled,
            T,
            SolverParams(workers=2, seed=args.seed),
            args.time_limit,
            optimize=False,
            horizon=chain + 4 * T,
            per_block=k,
        )
        row = {"D": d, "cap": cap, "k": k, "T": T, "seconds": time.monotonic() - started, "seed": args.seed}
        row.update(status="block found" if result.offsets is not None else result.status, repeat=None, run=tag)
        if result.offsets is not None:
            schedule = repeat_block(scaled, T, result.offsets, 4 * d)
            assert not find_violations(schedule), find_violations(schedule)[:3]
            row["repeat"] = schedule.metrics.makespan
            row["offsets"] = [[op, s, r, o] for (op, s, r), o in sorted(result.offsets.items())]
        store_row(path, data, row, lambda r: (r["D"], r["k"], r["T"], r["seed"]), render)
        print(f"{d} {k} {T}: {row['status']} in {row['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
