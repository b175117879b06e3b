"""Steady states with more than one microbatch per period: do they beat one-microbatch blocks?

The block model (`pipesynth.solver.block.solve_block`) at a fixed interval
T, with k microbatches per period (`per_block`): k = 1 is the solver's block
search; k = 2 lets the two microbatches of a period take different offsets.
For each row: whether a block exists (CP-SAT's status within the time
limit), and where one does, the plain repeat of it for m = 4D microbatches,
validated. V placement, V-Min-level cap, F,B,W = 3,4,2, 2 workers. Blocks
are at most one microbatch's chain plus 4 periods long (the solver's own
bound on a block's length is far looser: with it, D = 12, k = 2, T = 47
ends `unknown` after 300 s).

    python benchmarks/multi_block.py                 # every row, 300 s each at most
    python benchmarks/multi_block.py --time-limit 60

Writes benchmarks/results/multi_block.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path

from pipesynth.core.problem import make_problem
from pipesynth.core.validate import find_violations
from pipesynth.solver.block import heads_and_tails_scaled, repeat_block, solve_block
from pipesynth.solver.progress import SolverParams
from pipesynth.solver.scaled import Scaled

ROOT = Path(__file__).resolve().parents[1]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "multi_block.md")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    lines = [
        "# Blocks with one and two microbatches per period",
        "",
        f"`python benchmarks/multi_block.py --time-limit {args.time_limit:g}` at commit {commit.stdout.strip()} "
        f"({platform.node() or 'host'}, {os.cpu_count()} cores, workers=2, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the start). V placement, F,B,W = 3,4,2, "
        "cap at the V-Min level in chunk units; blocks at most one microbatch's chain plus 4T long; "
        "`per microbatch` = T / k; `repeat`: the plain repeat for "
        "m = 4D microbatches (no reorder), validated.",
        "",
        "| D | cap | k | T | per microbatch | status | seconds | repeat (m = 4D) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, cap, k, T in ROWS:
        problem = make_problem(d, 4 * d, "v", cost={"F": 3, "B": 4, "W": 2}, cap=cap)
        scaled = Scaled.of(problem)
        started = time.monotonic()
        heads, tails = heads_and_tails_scaled(scaled)
        chain = max(heads[p] + scaled.c(*p) + tails[p] for p in heads)
        result = solve_block(
            scaled, T, SolverParams(workers=2), args.time_limit, optimize=False, horizon=chain + 4 * T, per_block=k
        )
        seconds = time.monotonic() - started
        repeated = "-"
        if result.offsets is not None:
            schedule = repeat_block(scaled, T, result.offsets, 4 * d)
            assert not find_violations(schedule), find_violations(schedule)[:3]
            repeated = f"{schedule.metrics.makespan:g}"
        status = "block found" if result.offsets is not None else result.status
        lines.append(f"| {d} | {cap} | {k} | {T} | {T / k:g} | {status} | {seconds:.0f} | {repeated} |")
        print(lines[-1], flush=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
