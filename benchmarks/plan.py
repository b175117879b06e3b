"""`pipesynth plan` on Llama-shaped models: the plan against the best evenly split handcrafted schedule.

Everything here is PREDICTED by the analytic cost model (no GPU on this
machine): step times from FLOPs at the stated peak x MFU, bytes from the
memory model that tests/test_plan_costs.py checks against a real tiny Llama.
That check's figures (measured on this CPU, with the levels after F and
after the executor's split B) go to benchmarks/results/plan_memory.md, the
planning benchmark to benchmarks/results/plan.md.

    python benchmarks/plan.py [--time-limit 15] [--only 8B] [--memory-only] [--results FILE] [--memory-results FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from pipesynth.errors import InfeasibleError
from pipesynth.plan.costs import model_costs
from pipesynth.plan.job import Device, Job, ModelShape, Training
from pipesynth.plan.search import plan_job

RESULTS = Path(__file__).parent / "results"

#: Public sizes of the models' config.json files.
MODELS = {
    "Llama-3-8B": ModelShape(
        hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256, name="Llama-3-8B"
    ),
    "Llama-2-13B": ModelShape(
        hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40, head_dim=128, vocab=32000, name="Llama-2-13B"
    ),
    "Llama-3-70B": ModelShape(
        hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, head_dim=128, vocab=128256, name="Llama-3-70B"
    ),
}
#: H100 SXM: 989 dense bf16 TFLOP/s; a 400 Gb/s link between pipeline neighbours.
TFLOPS, MFU, BANDWIDTH, LATENCY = 989.0, 0.45, 50e9, 10e-6
TRAINING = {"seq_len": 4096, "microbatch_size": 1, "precision": "bf16-autocast", "optimizer": "adamw", "zero": 8}
#: Without recompute a 70B layer's activations leave room for under two microbatches per GPU (see the text).
RECOMPUTE = {"Llama-3-8B": "none", "Llama-2-13B": "none", "Llama-3-70B": "full"}
GIB = 2**30


def gib(x: float) -> str:
    return f"{x / GIB:.1f}"


def accuracy_table() -> list[str]:
    """Predicted vs measured saved-tensor bytes of a tiny random-weight Llama on CPU (transformers)."""
    try:
        import torch
        import transformers

        from pipesynth.runtime.layer_memory import layer_kind_bytes
    except ImportError as err:
        return [f"(skipped: {err}; pip install -e '.[runtime,dev]')"]
    from pipesynth.plan.job import model_from_hf_config

    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
    }
    shape = model_from_hf_config(config)
    fields = {k: v for k, v in config.items() if k != "model_type"}
    lines = [
        "| precision | attention | recompute | seq | mbs | layer | predicted bytes | measured bytes | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for precision in ("bf16-autocast", "bf16", "fp32"):
        for attention, impl in (("flash", "sdpa"), ("eager", "eager")):
            torch.manual_seed(0)
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields, attn_implementation=impl))
            model = model.to(torch.bfloat16) if precision == "bf16" else model
            for recompute in ("none", "full"):
                for seq in (32, 64):
                    for mbs in (1, 2):
                        t = Training(seq, mbs, 1, precision=precision, recompute=recompute, attention=attention)
                        costs = model_costs(Job(shape, t, Device(1, 1, GIB), 1))
                        measured = layer_kind_bytes(
                            model, mbs, seq, autocast=precision == "bf16-autocast", recompute=recompute == "full"
                        )
                        for kind, got in measured.items():
                            want = getattr(costs, kind).activation
                            error = (want - got) / got
                            worst = max(worst, abs(error))
                            lines.append(
                                f"| {precision} | {attention} | {recompute} | {seq} | {mbs} | {kind} | {want:.0f} "
                                f"| {got} | {100 * error:+.2f}% |"
                            )
    lines.append("")
    lines.append(f"Largest error: {100 * worst:.2f}% (target: within 10%).")
    return lines + ["", *kept_for_w_table(fields, shape)]


def kept_for_w_table(fields: dict, shape) -> list[str]:
    """The levels after F and after the executor's split B on decoder layer 0 against the model's figures."""
    import torch
    import transformers

    from pipesynth.plan.costs import decoder_params
    from pipesynth.runtime.layer_memory import split_backward_bytes

    lines = [
        "Split backward: the levels decoder layer 0 holds after F and after the executor's B "
        "(`runtime/layer_memory.split_backward_bytes`: split Linears deferring their weight-gradient products, "
        "RMSNorm weight gradients computed in B, as a pipeline stage runs them) against the model's activation "
        "and kept-for-W bytes. Under autocast a split Linear saves its input only, not autocast's bf16 copy of its "
        "weight, which the model counts per microbatch: the after-F row gives that copy "
        f"({2 * decoder_params(shape)[0]} bytes) apart.",
        "",
        "| precision | attention | seq | mbs | after F, measured | after F, predicted | of which weight copies "
        "| after B, measured | kept for W, predicted | error after B |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for precision in ("bf16-autocast", "bf16", "fp32"):
        for attention, impl in (("flash", "sdpa"), ("eager", "eager")):
            for seq, mbs in ((32, 1), (64, 2)):
                torch.manual_seed(0)
                model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields, attn_implementation=impl))
                model = model.to(torch.bfloat16) if precision == "bf16" else model
                autocast = precision == "bf16-autocast"
                after_f, after_b = split_backward_bytes(model, mbs, seq, autocast=autocast)
                t = Training(seq, mbs, 1, precision=precision, attention=attention)
                costs = model_costs(Job(shape, t, Device(1, 1, GIB), 1)).decoder
                copies = 2 * decoder_params(shape)[0] if autocast else 0
                error = (costs.kept_for_w - after_b) / after_b
                worst = max(worst, abs(error))
                lines.append(
                    f"| {precision} | {attention} | {seq} | {mbs} | {after_f} | {costs.activation:.0f} | {copies} "
                    f"| {after_b} | {costs.kept_for_w:.0f} | {100 * error:+.2f}% |"
                )
    lines += ["", f"Largest error after B: {100 * worst:.2f}% (target: within 10%)."]
    return lines


def plan_rows(time_limit: float, only: str | None) -> tuple[list[str], list[str]]:
    header = [
        "| model | recompute | GPUs | GB per GPU | m | best even split (fits) | its step ms | its peak GiB "
        "| plan | plan split (decoder layers per stage) | plan step ms | plan peak GiB | plan vs even | plan s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows, summary = [], {"rows": 0, "faster5": 0, "fits_only": 0, "slower": 0, "infeasible": 0, "slowest_s": 0.0}
    for name, model in MODELS.items():
        if only and only not in name:
            continue
        for gpus in (8, 16):
            for memory_gb in (40, 80):
                for per in (2, 8):
                    m = per * gpus
                    job = Job(
                        model,
                        Training(microbatches=m, recompute=RECOMPUTE[name], **TRAINING),
                        Device(TFLOPS, MFU, memory_gb * 1e9, bandwidth=BANDWIDTH, latency=LATENCY),
                        gpus,
                    )
                    summary["rows"] += 1
                    lead = f"| {name} | {RECOMPUTE[name]} | {gpus} | {memory_gb} | {m} |"
                    started = time.monotonic()
                    try:
                        result = plan_job(job, time_limit=time_limit)
                    except InfeasibleError as err:
                        seconds = time.monotonic() - started
                        summary["infeasible"] += 1
                        summary["slowest_s"] = max(summary["slowest_s"], seconds)
                        why = str(err).replace("|", "/")
                        rows.append(f"{lead} - | - | - | {why} | | | | | {seconds:.0f} |")
                        print(rows[-1], flush=True)
                        continue
                    seconds = time.monotonic() - started
                    summary["slowest_s"] = max(summary["slowest_s"], seconds)
                    budget = job.device.budget
                    fitting = [b for b in result.baselines if b.fits(budget)]
                    plan = result.plan
                    split = ",".join(str(n) for n in plan.partition.layers)
                    plan_step, plan_peak = f"{plan.makespan / 1e3:.0f}", gib(max(plan.total))
                    plan_cells = f"{plan.label} ({plan.layout.label}) | {split} | {plan_step} | {plan_peak}"
                    if fitting:
                        best = min(fitting, key=lambda b: b.makespan)
                        gain = 1 - plan.makespan / best.makespan
                        summary["faster5"] += gain >= 0.05
                        summary["slower"] += gain < -1e-9
                        rows.append(
                            f"{lead} {best.label} ({best.layout.label}) "
                            f"| {best.makespan / 1e3:.0f} | {gib(max(best.total))} | {plan_cells} "
                            f"| {100 * gain:+.1f}% | {seconds:.0f} |"
                        )
                    else:
                        summary["fits_only"] += 1
                        smallest = min(result.baselines, key=lambda b: max(b.total))
                        rows.append(
                            f"{lead} none fits (least: {smallest.label}, "
                            f"{gib(max(smallest.total))} GiB) | - | - | {plan_cells} | fits | {seconds:.0f} |"
                        )
                    print(rows[-1], flush=True)
    s = summary
    won = s["faster5"] + s["fits_only"]
    feasible = s["rows"] - s["infeasible"]
    lines = [
        f"Rows: {s['rows']}; no plan exists (the budget is below the least any split needs, message shown): "
        f"{s['infeasible']}.",
        f"Of the {feasible} rows with a plan: >= 5% faster than the best evenly split handcrafted schedule that fits: "
        f"{s['faster5']}; fits where no evenly split handcrafted schedule does: {s['fits_only']} "
        f"({won} of {feasible} rows); slower: {s['slower']}.",
        f"Slowest planning time: {s['slowest_s']:.0f} s (target <= 60 s per row).",
    ]
    return header + rows, lines


def header(title: str, load_start: tuple[float, ...], started: float) -> list[str]:
    """A results file's title and the line saying which command made it, where, under what load."""
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/plan.py", *sys.argv[1:]])
    return [
        f"# {title}",
        "",
        f"Command: `{command}` on {platform.node()} ({os.cpu_count()} cores, shared with other jobs); load average "
        f"{load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; {time.monotonic() - started:.0f} s "
        "in all.",
        "",
    ]


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=15.0, help="plan_job's whole time limit.")
    parser.add_argument("--only", default=None, help="Only models whose name contains this.")
    parser.add_argument("--memory-only", action="store_true", help="Only the measured memory tables (seconds).")
    parser.add_argument("--results", type=Path, default=RESULTS / "plan.md")
    parser.add_argument("--memory-results", type=Path, default=RESULTS / "plan_memory.md")
    args = parser.parse_args()
    load_start = os.getloadavg()
    started = time.monotonic()
    tables = accuracy_table()
    write(
        args.memory_results,
        [
            *header(
                "Activation memory of the plan's model: predicted vs measured (tiny Llama, CPU)", load_start, started
            ),
            "A random-weight `LlamaForCausalLM` (hidden 64, MLP 176, 4 heads, 2 KV heads, vocabulary 128); measured:",
            "saved-tensor bytes under the executor's ActivationMeter (`runtime/layer_memory.py`) for the embedding,",
            "decoder layer 0 (full recompute: under torch.utils.checkpoint) and the head with its cross-entropy loss.",
            "",
            *tables,
            "",
        ],
    )
    if args.memory_only:
        return
    load_start = os.getloadavg()
    started = time.monotonic()
    table, summary = plan_rows(args.time_limit, args.only)
    t = TRAINING
    text = [
        *header("Planning benchmark (PREDICTED: analytic cost model, no GPU)", load_start, started),
        "The memory model's check against a real tiny Llama on CPU: `plan_memory.md` (`--memory-only`).",
        "",
        "## Plan vs the best evenly split handcrafted schedule",
        "",
        f"Every figure below is predicted. Device: {TFLOPS:g} TFLOP/s peak x {MFU} MFU, P2P {BANDWIDTH / 1e9:g} GB/s "
        f"and {LATENCY * 1e6:g} us; training: sequence {t['seq_len']}, microbatch size {t['microbatch_size']}, "
        f"{t['precision']}, {t['optimizer']}, optimizer states sharded over {t['zero']} data-parallel ranks (ZeRO-1), "
        "flash attention; no recompute for the 8B and 13B models, full recompute for the 70B (without it a 70B "
        "layer's activations, about 4 GB per microbatch at 4096 tokens under autocast, leave room for under two "
        "microbatches per GPU next to its weights, and every plan is mostly bubble). `m`: microbatches per step "
        "(2D and 8D). The baseline is the fastest of every "
        "handcrafted schedule (GPipe, 1F1B, interleaved 1F1B x2/x4, ZB-H1, ZB-H2, V-Min, V-Half, V-ZB, ZB-V) on "
        "torchtitan's even split that fits the memory (static + activation peak per GPU); the plan searches the "
        "split, placement and schedule together (then CP-SAT). Peak: the largest GPU's static + activation bytes.",
        "",
        *table,
        "",
        *summary,
        "",
    ]
    write(args.results, text)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
