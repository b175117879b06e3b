"""The official V-shape schedules' figures, from a local checkout of the official implementation.

"Pipeline Parallelism with Controllable Memory" (Qi et al. 2024) ships its
schedulers in sail-sg/zero-bubble-pipeline-parallelism, under
megatron/core/pipeline_parallel/zerobubble/scheduler/: V-Min and V-Half
(`zbv_greedy.py`, the building blocks greedily reordered, as its runtime runs
them), ZB-V (`zbv.py`, capped at 2D chunk units) and the building-block
enumerator (`v_auto_schedule.py`, "adaptive@k": the best block it finds under
a cap of k chunk units). Those files are plain Python. This script imports
them from the checkout given (their code is not in this repository), takes
each one's order of passes per device, and times it with pipesynth's
simulator (docs/design.md section 2: V placement, comm on every message
between devices, 1 chunk unit of activation per stage), so the figures
compare with ours under one set of rules. Only the figures are committed:

- `--set in-sample` rebuilds benchmarks/anchors/official_v_schedules.json
  (the 12 public anchor instances the V-shape reorder portfolios were chosen
  on) and says whether it matches the committed file;
- `--set out-of-sample` writes benchmarks/anchors/official_out_of_sample.json
  for the instances of OUT_OF_SAMPLE, which no portfolio was chosen on.

Run: git clone https://github.com/sail-sg/zero-bubble-pipeline-parallelism /tmp/zb
     python -m benchmarks.official_figures --official /tmp/zb --set out-of-sample
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

from pipesynth.core.problem import make_problem
from pipesynth.core.simulate import from_order
from pipesynth.core.validate import find_violations
from pipesynth.formats.files import write_text_atomic

ANCHORS = Path(__file__).resolve().parent / "anchors"
FILES = {"in-sample": ANCHORS / "official_v_schedules.json", "out-of-sample": ANCHORS / "official_out_of_sample.json"}
SCHEDULER = "megatron.core.pipeline_parallel.zerobubble.scheduler"

#: Instances no reorder portfolio was tuned on: other depths (5, 7, 10), m = 3D and 5D, and costs
#: apart both ways, with comm.
OUT_OF_SAMPLE = [
    {"p": p, "m": k * p, "cost": cost, "comm": comm}
    for p in (5, 7, 10)
    for k in (3, 5)
    for cost, comm in (([1, 1, 1], 0), ([2, 3, 1], 0.5), ([5, 4, 6], 2))
]

ABOUT = (
    "Schedules of the official implementation of 'Pipeline Parallelism with Controllable Memory' "
    "(sail-sg/zero-bubble-pipeline-parallelism), timed with pipesynth's rules (docs/design.md section 2): "
    "V-shape placement (2 stages per device, stage s on device s for s<p, else 2p-1-s), F/B/W costs equal on "
    "every stage, comm latency added on every cross-device edge, activation 1 unit per stage per microbatch "
    "held from F until W ('chunk units': 1F1B on the same model holds 2p). makespan = iteration time; "
    "bubble_rate = 1 - total work / (devices * makespan). v-min / v-half: zbv_greedy.py (the paper's building "
    "blocks, repeated, squeezed and greedily reordered). zb-v: zbv.py, capped at 2p. adaptive@k: "
    "v_auto_schedule.py, the paper's building-block enumerator run with memory cap k. Produced by "
    "benchmarks/official_figures.py (see `source`)."
)


def scheduler_modules(checkout: Path):
    """The official scheduler modules, loaded from their files alone (plain Python): the packages above
    them import Megatron's training stack, which these four files do not need."""
    parts = SCHEDULER.split(".")
    for i in range(1, len(parts) + 1):  # empty stand-ins for the packages, so their imports resolve
        package = types.ModuleType(".".join(parts[:i]))
        package.__path__ = []
        sys.modules.setdefault(package.__name__, package)
    folder = checkout / Path(*parts)
    loaded = {}
    for name in ("graph", "zbv", "zbv_greedy", "v_auto_schedule"):
        spec = importlib.util.spec_from_file_location(f"{SCHEDULER}.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        loaded[name] = module
    return loaded["zbv"], loaded["zbv_greedy"], loaded["v_auto_schedule"]


def figures(inst: dict, order: list[list[tuple[str, int, int]]]) -> dict:
    """The order timed by our simulator; it must be a valid schedule."""
    p, m = inst["p"], inst["m"]
    problem = make_problem(p, m, "v", cost=dict(zip("FBW", inst["cost"])), comm=inst["comm"])
    s = from_order(problem, order, "official")
    broken = find_violations(s)
    if broken:
        raise SystemExit(f"the official order breaks a rule at p={p} m={m}: {broken[0]}")
    m_ = s.metrics
    return {
        "makespan": m_.makespan,
        "bubble_rate": round(m_.bubble_rate, 4),
        "peak_chunks": max(m_.peak_memory),
    }


def official_results(modules, inst: dict, adaptive_caps: list[float] | None) -> dict:
    """v-min, v-half, zb-v and adaptive@k (k: the given caps, or v-min's, v-half's and 2p) of one instance."""
    zbv, zbv_greedy, v_auto = modules
    p, m, cost, comm = inst["p"], inst["m"], inst["cost"], inst["comm"]
    config = SimpleNamespace(max_chunks=2, n_stages=p)

    def by_layer_group(nodes):  # zbv and zbv_greedy: layer_group_idx is our V stage
        return [[(n.type.value, n.layer_group_idx, n.microbatch) for n in dev] for dev in nodes]

    def by_chunk(nodes):  # v_auto_schedule: chunk 1 of device i is stage 2p-1-i
        return [[(n.type, 2 * p - 1 - n.stage if n.chunk else n.stage, n.minibatch) for n in dev] for dev in nodes]

    builders = {
        "v-min": lambda: by_layer_group(zbv_greedy.PipelineGraph(p, m, "min", *cost, comm).create_schedule(config)),
        "v-half": lambda: by_layer_group(zbv_greedy.PipelineGraph(p, m, "half", *cost, comm).create_schedule(config)),
        # memory of F +1, B 0, W -1 chunk units; default cap 2p
        "zb-v": lambda: by_layer_group(zbv.PipelineGraph(p, m, *cost, comm, 1, 0, -1).create_schedule(config)),
    }
    results = {}
    for name, build in builders.items():
        with contextlib.redirect_stdout(io.StringIO()):  # the schedulers print their own summaries
            order = build()
        results[name] = figures(inst, order)
    if adaptive_caps is None:
        adaptive_caps = sorted({results["v-min"]["peak_chunks"], results["v-half"]["peak_chunks"], 2.0 * p})
    for k in adaptive_caps:
        with contextlib.redirect_stdout(io.StringIO()):
            order = by_chunk(v_auto.schedule(p, m, [*cost, comm], k))
        results[f"adaptive@{float(k)}"] = figures(inst, order)
    return results


def source(checkout: Path, which: str) -> dict:
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return {
        "repository": "https://github.com/sail-sg/zero-bubble-pipeline-parallelism",
        "commit": commit.stdout.strip() or "unknown",
        "command": f"python -m benchmarks.official_figures --official CHECKOUT --set {which}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="A checkout of the official repository.")
    parser.add_argument("--set", choices=sorted(FILES), default="out-of-sample")
    args = parser.parse_args()
    modules = scheduler_modules(args.official)
    if args.set == "in-sample":
        committed = json.loads(FILES["in-sample"].read_text())
        todo = [
            (
                {k: inst[k] for k in ("p", "m", "cost", "comm")},
                [float(r.split("@")[1]) for r in inst["results"] if r.startswith("adaptive@")],
            )
            for inst in committed["instances"]
        ]
    else:
        todo = [(inst, None) for inst in OUT_OF_SAMPLE]
    instances = []
    for inst, caps in todo:
        start = time.perf_counter()
        instances.append({**inst, "results": official_results(modules, inst, caps)})
        took = time.perf_counter() - start
        print(
            f"done p={inst['p']} m={inst['m']} cost={inst['cost']} comm={inst['comm']} ({took:.0f} s)", file=sys.stderr
        )
    data = {"about": ABOUT, "source": source(args.official, args.set), "instances": instances}
    if args.set == "in-sample":
        same = all(
            {k: {f: r[f] for f in ("makespan", "peak_chunks")} for k, r in new["results"].items()}
            == {k: {f: r[f] for f in ("makespan", "peak_chunks")} for k, r in old["results"].items()}
            for new, old in zip(instances, committed["instances"])
        )
        print(f"makespans and peaks {'match' if same else 'DIFFER FROM'} the committed file", file=sys.stderr)
        if not same:
            raise SystemExit(1)
    write_text_atomic(FILES[args.set], json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
