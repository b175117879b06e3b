"""Every generator on the public anchor instances, next to the official implementation's figures.

The anchors (benchmarks/anchors/official_v_schedules.json) are schedules of
"Pipeline Parallelism with Controllable Memory"'s own code, measured with
docs/design.md's rules on a V-shape model: 2D stages, F/B/W costs per stage,
activation 1 per stage ("chunk units"). Every generator runs that same
model: placements with k stages per device get 2/k of a V stage's costs and
activation, so makespans and peaks compare across placements.

For each of our schedules the table gives the official figure of the same
name (where there is one) and the best official schedule that uses no more
memory than ours, each with the ratio ours / official (below 1: faster).

Run: python benchmarks/anchors.py   (writes benchmarks/results/anchors.json and .md)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipesynth.construct import GENERATORS, generate, problem_for
from pipesynth.errors import PipesynthError
from pipesynth.formats.files import write_text_atomic

ROOT = Path(__file__).resolve().parent
ANCHORS = ROOT / "anchors" / "official_v_schedules.json"
RESULTS = ROOT / "results"
COMMAND = "python benchmarks/anchors.py"


def run_instance(inst: dict) -> list[dict]:
    """One row per generator that can run the instance."""
    d, m, comm = inst["p"], inst["m"], inst["comm"]
    stage_cost = dict(zip("FBW", inst["cost"]))
    rows = []
    for name in GENERATORS:
        k = problem_for(name, d, m).stages / d  # stages per device
        scale = 2 / k  # a device's share is two V stages
        try:
            start = time.perf_counter()
            s = generate(name, d, m, cost={op: c * scale for op, c in stage_cost.items()}, comm=comm, activation=scale)
            seconds = time.perf_counter() - start
        except PipesynthError as err:
            rows.append({"name": name, "skipped": str(err)})
            continue
        peak = max(s.metrics.peak_memory)
        same = inst["results"].get(name)
        within = [r for r in inst["results"].values() if r["peak_chunks"] <= peak + 1e-9]
        best = min(within, key=lambda r: r["makespan"], default=None)
        rows.append(
            {
                "name": name,
                "makespan": s.metrics.makespan,
                "bubble_rate": s.metrics.bubble_rate,
                "peak_chunks": peak,
                "seconds": round(seconds, 2),
                "official_same_name": same["makespan"] if same else None,
                "ratio_same_name": round(s.metrics.makespan / same["makespan"], 4) if same else None,
                "official_best_within_memory": best["makespan"] if best else None,
                "ratio_best_within_memory": round(s.metrics.makespan / best["makespan"], 4) if best else None,
            }
        )
    return rows


def summary(results: list[dict]) -> list[str]:
    """Per V generator with an official twin: on how many instances we match or beat it, and the worst ratio."""
    lines = ["| schedule | instances at ratio <= 1 (same name) | worst ratio | best ratio |", "|---|---|---|---|"]
    for name in ("v-min", "v-half", "zb-v"):
        ratios = [
            r["ratio_same_name"] for res in results for r in res["rows"] if r["name"] == name and "skipped" not in r
        ]
        ratios = [x for x in ratios if x is not None]
        if ratios:
            ok = sum(x <= 1 for x in ratios)
            lines.append(f"| {name} | {ok} of {len(ratios)} | {max(ratios):.4f} | {min(ratios):.4f} |")
    return lines


def markdown(results: list[dict]) -> str:
    lines = [
        "# Anchor instances: our generators against the official implementation",
        "",
        f"Command: `{COMMAND}` (see the script's docstring for the model and columns).",
        "Peak in chunk units (one V stage's activation per microbatch); ratios are ours / official,"
        " below 1 is faster. 'best official within memory': the fastest official schedule (v-min,"
        " v-half, zb-v, adaptive@k) whose peak is at most ours.",
        "",
        *summary(results),
        "",
    ]
    for res in results:
        inst = res["instance"]
        cost = "/".join(str(c) for c in inst["cost"])
        lines += [
            f"## D={inst['p']}, m={inst['m']}, F/B/W={cost}, comm={inst['comm']}",
            "",
            "| schedule | makespan | bubble | peak | official, same name | ratio | best official within memory"
            " | ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in res["rows"]:
            if "skipped" in row:
                lines.append(f"| {row['name']} | skipped: {row['skipped']} | | | | | | |")
                continue

            def fmt(x, spec="g"):
                return "" if x is None else format(x, spec)

            lines.append(
                f"| {row['name']} | {row['makespan']:g} | {row['bubble_rate']:.4f} | {row['peak_chunks']:g}"
                f" | {fmt(row['official_same_name'])} | {fmt(row['ratio_same_name'], '.4f')}"
                f" | {fmt(row['official_best_within_memory'])} | {fmt(row['ratio_best_within_memory'], '.4f')} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    instances = json.loads(ANCHORS.read_text())["instances"]
    results = []
    for inst in instances:
        results.append({"instance": {k: inst[k] for k in ("p", "m", "cost", "comm")}, "rows": run_instance(inst)})
        print(f"done D={inst['p']} m={inst['m']} cost={inst['cost']} comm={inst['comm']}", file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    write_text_atomic(RESULTS / "anchors.json", json.dumps({"command": COMMAND, "results": results}, indent=1))
    write_text_atomic(RESULTS / "anchors.md", markdown(results))


if __name__ == "__main__":
    main()
