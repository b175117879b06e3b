"""Every generator on V-shape instances, next to the official implementation's figures and lower bounds.

Two sets of instances, reported apart (docs/design.md section 8):

- **in-sample**: the 12 public anchor instances
  (benchmarks/anchors/official_v_schedules.json). The V-shape reorder
  portfolios (`construct.blocks.UNROLL_VARIANTS`, `construct.vshape.ZB_V_VARIANTS`)
  were chosen on these, so matching the official figures there says little
  about other instances;
- **out-of-sample**: instances no portfolio was chosen on
  (benchmarks/anchors/official_out_of_sample.json, made by
  benchmarks/official_figures.py): other depths, microbatch counts and costs.

The official figures are the official schedulers' orders timed with our
rules. Every generator runs the same model (docs/design.md section 2): 2D
chunks of the instance's costs, a V stage one chunk, a linear stage two;
peaks in chunk units. Each row gives the official schedule of the same name
(with its peak) and the fastest official schedule whose peak is at most
ours, with ratios ours / official (below 1: faster), and a lower bound no
schedule of that placement and memory can beat: the larger of pipesynth's
proven bound (`solver.bounds.makespan_lower_bound`) and, for V-shape rows
at equal costs and no comm, the paper's 6m + 6D - 3k - 1 at our peak k.

Run: python benchmarks/anchors.py   (writes benchmarks/results/anchors.json and .md)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pipesynth.analysis.pareto import same_model_schedules
from pipesynth.formats.files import write_text_atomic
from pipesynth.solver.bounds import makespan_lower_bound

ROOT = Path(__file__).resolve().parent
SETS = {
    "in-sample": ROOT / "anchors" / "official_v_schedules.json",
    "out-of-sample": ROOT / "anchors" / "official_out_of_sample.json",
}
RESULTS = ROOT / "results"
COMMAND = "python benchmarks/anchors.py"
TWINS = ("v-min", "v-half", "zb-v")  # our generators with an official schedule of the same name
V_FAMILY = ("v-min", "v-half", "v-zb", "zb-v")
EPS = 1e-9


def paper_bound(inst: dict, peak: float) -> float | None:
    """6m + 6D - 3k - 1 (the paper's appendix): V placement, equal unit costs, no comm, cap k chunk units."""
    if list(inst["cost"]) != [1, 1, 1] or inst["comm"] != 0:
        return None
    return 6 * inst["m"] + 6 * inst["p"] - 3 * peak - 1


def run_instance(inst: dict) -> list[dict]:
    """One row per generator that can run the instance."""
    d, m, comm = inst["p"], inst["m"], inst["comm"]
    cost = dict(zip("FBW", inst["cost"]))
    start = time.perf_counter()
    schedules, skipped = same_model_schedules(d, m, cost, comm)
    seconds = (time.perf_counter() - start) / max(1, len(schedules))
    rows = [{"name": note.split(":")[0], "skipped": note.split(": ", 1)[1]} for note in skipped]
    for s in schedules:
        peak = max(s.metrics.peak_memory)
        same = inst["results"].get(s.name)
        within = [r for r in inst["results"].values() if r["peak_chunks"] <= peak + EPS]
        best = min(within, key=lambda r: r["makespan"], default=None)
        ours_bound = makespan_lower_bound(s.problem.with_cap(tuple(s.metrics.peak_memory)))
        paper = paper_bound(inst, peak) if s.name in V_FAMILY else None
        bound = max(ours_bound, paper or 0.0)
        rows.append(
            {
                "name": s.name,
                "makespan": s.metrics.makespan,
                "bubble_rate": s.metrics.bubble_rate,
                "peak_chunks": peak,
                "official_same_name": same["makespan"] if same else None,
                "official_same_name_peak": same["peak_chunks"] if same else None,
                "ratio_same_name": round(s.metrics.makespan / same["makespan"], 4) if same else None,
                "official_best_within_memory": best["makespan"] if best else None,
                "ratio_best_within_memory": round(s.metrics.makespan / best["makespan"], 4) if best else None,
                "lower_bound": bound,
                "bound_from": "paper" if paper is not None and paper > ours_bound + EPS else "pipesynth",
                "gap": round((s.metrics.makespan - bound) / s.metrics.makespan, 4),
            }
        )
    rows.sort(key=lambda r: "skipped" in r)
    print(f"  {seconds:.2f} s per generator", file=sys.stderr)
    return rows


def rows_of(results: list[dict], name: str) -> list[dict]:
    return [r for res in results for r in res["rows"] if r["name"] == name and "skipped" not in r]


def summary(results: list[dict]) -> list[str]:
    """Per V generator: against the official twin, against the best official within its memory, gap to the bound."""
    lines = [
        "| schedule | ratio <= 1 vs same name | at no more memory | worst / best ratio"
        " | ratio <= 1 vs best official within memory | worst | gap to lower bound: mean / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in V_FAMILY:
        rows = rows_of(results, name)
        if not rows:
            continue
        same = [r for r in rows if r["ratio_same_name"] is not None]
        twin = ""
        if same:
            ratios = [r["ratio_same_name"] for r in same]
            ok = sum(x <= 1 for x in ratios)
            lean = sum(r["peak_chunks"] <= r["official_same_name_peak"] + EPS for r in same)
            twin = f"{ok} of {len(same)} | {lean} of {len(same)} | {max(ratios):.4f} / {min(ratios):.4f}"
        else:
            twin = "(no twin) | | "
        best = [r["ratio_best_within_memory"] for r in rows if r["ratio_best_within_memory"] is not None]
        gaps = [r["gap"] for r in rows]
        lines.append(
            f"| {name} | {twin} | {sum(x <= 1 for x in best)} of {len(best)} | {max(best):.4f}"
            f" | {100 * sum(gaps) / len(gaps):.1f}% / {100 * max(gaps):.1f}% |"
        )
    return lines


def instance_table(res: dict) -> list[str]:
    inst = res["instance"]
    cost = "/".join(f"{c:g}" for c in inst["cost"])
    lines = [
        f"### D={inst['p']}, m={inst['m']}, F/B/W={cost}, comm={inst['comm']:g}",
        "",
        "| schedule | makespan | bubble | peak | official, same name (peak) | ratio"
        " | best official within memory | ratio | lower bound | gap |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(x, spec="g"):
        return "" if x is None else format(x, spec)

    for row in res["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['name']} | skipped: {row['skipped']} | | | | | | | | |")
            continue
        same = fmt(row["official_same_name"])
        if same:
            same += f" ({row['official_same_name_peak']:g})"
        bound = f"{row['lower_bound']:g}" + (" (paper)" if row["bound_from"] == "paper" else "")
        lines.append(
            f"| {row['name']} | {row['makespan']:g} | {row['bubble_rate']:.4f} | {row['peak_chunks']:g}"
            f" | {same} | {fmt(row['ratio_same_name'], '.4f')}"
            f" | {fmt(row['official_best_within_memory'])} | {fmt(row['ratio_best_within_memory'], '.4f')}"
            f" | {bound} | {100 * row['gap']:.1f}% |"
        )
    lines.append("")
    return lines


def markdown(by_set: dict[str, list[dict]], load: tuple[float, float]) -> str:
    lines = [
        "# V-shape instances: our generators against the official implementation and lower bounds",
        "",
        f"Command: `{COMMAND}` (the script's docstring says what the columns are). Machine load (1-minute"
        f" average) at the start and end: {load[0]:.1f}, {load[1]:.1f}; these figures do not depend on it.",
        "",
        "Peaks in chunk units (one V stage's activation per microbatch; 1F1B holds 2D). Ratios are ours /"
        " official, below 1 is faster. 'best official within memory': the fastest official schedule (v-min,"
        " v-half, zb-v, adaptive@k) whose peak is at most ours. 'lower bound': no schedule of that placement"
        " and peak can be faster (pipesynth's proven bound, or the paper's 6m+6D-3k-1 where marked); gap ="
        " (makespan - bound) / makespan.",
        "",
        "**In-sample** instances are the 12 public anchors: the V-shape reorder portfolios (UNROLL_VARIANTS,"
        " ZB_V_VARIANTS) were chosen on them, so they show the portfolios fit what they were fitted to."
        " **Out-of-sample** instances (other D, m, costs and comm) were not used to choose anything; their"
        " official figures come from running the official schedulers (benchmarks/official_figures.py).",
        "",
    ]
    for which, results in by_set.items():
        lines += [f"## {which}: {len(results)} instances", "", *summary(results), ""]
    for which, results in by_set.items():
        lines += [f"## {which}: every instance", ""]
        for res in results:
            lines += instance_table(res)
    return "\n".join(lines)


def main() -> None:
    start_load = os.getloadavg()[0]
    by_set: dict[str, list[dict]] = {}
    for which, path in SETS.items():
        results = []
        for inst in json.loads(path.read_text())["instances"]:
            print(f"{which}: D={inst['p']} m={inst['m']} cost={inst['cost']} comm={inst['comm']}", file=sys.stderr)
            keys = {k: inst[k] for k in ("p", "m", "cost", "comm")}
            results.append({"instance": keys, "rows": run_instance(inst)})
        by_set[which] = results
    load = (start_load, os.getloadavg()[0])
    RESULTS.mkdir(exist_ok=True)
    data = {"command": COMMAND, "sets": by_set}
    write_text_atomic(RESULTS / "anchors.json", json.dumps(data, indent=1) + "\n")
    write_text_atomic(RESULTS / "anchors.md", markdown(by_set, load))


if __name__ == "__main__":
    main()
