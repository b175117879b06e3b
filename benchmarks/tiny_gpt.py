"""Benchmark 4: the tiny GPT (or a tiny Hugging Face Llama) trained with every schedule: step time and peak
activation memory.

Same model, data and seed for every schedule (the losses agree), plus the
unpipelined single-process reference. Step time of a step = the slowest
rank's; we report the median over the measured steps (the first steps, with
the shape handshake and allocator warm-up, are skipped). Peak activation is
the largest live-saved-activation peak of any rank (saved-tensor hooks),
next to the schedule's prediction (profiled bytes per stage walked through
the rank's action list).

    python benchmarks/tiny_gpt.py                      # CPU, gloo
    python benchmarks/tiny_gpt.py --model tiny-llama --precision bf16 --ranks 4 --microbatches 16
    python benchmarks/tiny_gpt.py --device cuda        # one GPU per rank, NCCL
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path

import torch

from pipesynth.construct import GENERATORS, generate
from pipesynth.runtime.llama import LlamaSize
from pipesynth.runtime.models import GPTConfig
from pipesynth.runtime.train import MODELS, PRECISIONS, TrainConfig, run_training

RESULTS = Path(__file__).parent / "results"


def summarize(report: dict, warmup: int) -> dict:
    ranks = report["ranks"]
    steps = len(ranks[0]["step_seconds"])
    per_step = [max(r["step_seconds"][i] for r in ranks) for i in range(warmup, steps)]
    return {
        "step_ms": statistics.median(per_step) * 1e3,
        "peak_kib": max(r["measured_peak_bytes"] for r in ranks) / 1024,
        "predicted_kib": max(r.get("predicted_peak_bytes", 0) for r in ranks) / 1024,
        "per_rank_kib": [r["measured_peak_bytes"] / 1024 for r in ranks],
        "final_loss": report["losses"][-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    parser.add_argument("--model", default="tiny-gpt", choices=MODELS)
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="fp32, or autocast bf16/fp16")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--microbatch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the step time")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="results file (default: results/tiny_gpt_<device>.md)")
    args = parser.parse_args()
    start_load = os.getloadavg()[0]
    gpt = GPTConfig(seq_len=args.seq, dim=args.dim, blocks=args.blocks)
    llama = LlamaSize(hidden=args.dim, intermediate=2 * args.dim, layers=args.blocks)
    cfg = TrainConfig(
        steps=args.steps,
        microbatch_size=args.microbatch_size,
        gpt=gpt,
        model=args.model,
        llama=llama,
        precision=args.precision,
        device=args.device,
    )
    rows = []
    for name in GENERATORS:
        schedule = generate(name, args.ranks, args.microbatches)
        s = summarize(run_training(schedule, cfg), args.warmup)
        rows.append((name, schedule, s))
        print(f"{name}: {s['step_ms']:.1f} ms/step, peak {s['peak_kib']:.0f} KiB", flush=True)
    reference = summarize(run_training(generate("1f1b", args.ranks, args.microbatches), cfg, ranks=1), args.warmup)
    base = next(s for name, _, s in rows if name == "1f1b")
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (gloo), 1 torch thread per rank"
    if args.model == "tiny-llama":
        what = (
            f"Tiny Llama (transformers LlamaForCausalLM: {llama.layers} decoder layers, hidden {llama.hidden}, "
            f"{llama.heads} heads / {llama.kv_heads} KV heads, sequence {args.seq}, vocab {llama.vocab})"
        )
    else:
        what = (
            f"Tiny GPT ({gpt.blocks} blocks, dim {gpt.dim}, {gpt.heads} heads, sequence {gpt.seq_len}, "
            f"vocab {gpt.vocab})"
        )
    precision = "float32" if args.precision == "fp32" else f"{args.precision} autocast"
    lines = [
        f"# Benchmark 4: {args.model}, every schedule on local ranks",
        "",
        "Command: `python " + " ".join(shlex.quote(a) for a in ["benchmarks/tiny_gpt.py", *sys.argv[1:]]) + "`",
        "",
        f"{what}, "
        f"{args.ranks} ranks on {card}, {args.microbatches} microbatches of {args.microbatch_size} sequences, "
        f"{precision}, Adam; median step time over steps {args.warmup + 1}..{args.steps} (slowest rank per step); "
        f"torch {torch.__version__}. Peak activation = largest rank's peak of live saved activations.",
        "",
        "| schedule | stages | step ms | vs 1F1B | peak KiB (max rank) | predicted KiB | peak vs 1F1B "
        "| per-rank peak KiB | final loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, schedule, s in rows:
        lines.append(
            f"| {name} | {schedule.problem.stages} | {s['step_ms']:.1f} | {s['step_ms'] / base['step_ms']:.2f} "
            f"| {s['peak_kib']:.0f} | {s['predicted_kib']:.0f} | {s['peak_kib'] / base['peak_kib']:.2f} "
            f"| {' / '.join(f'{v:.0f}' for v in s['per_rank_kib'])} | {s['final_loss']:.6f} |"
        )
    lines += [
        f"| unpipelined reference (1 rank) | 1 | {reference['step_ms']:.1f} | "
        f"{reference['step_ms'] / base['step_ms']:.2f} | {reference['peak_kib']:.0f} | - | "
        f"{reference['peak_kib'] / base['peak_kib']:.2f} | - | {reference['final_loss']:.6f} |",
        "",
        f"Machine: {os.cpu_count()} CPU cores, load average (1 min) {start_load:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end; the model is "
        "tiny, so step times mostly measure per-pass overhead and P2P, and are indicative only; the memory columns "
        "are exact.",
        "",
    ]
    name = "tiny_gpt" if args.model == "tiny-gpt" else f"tiny_llama_{args.precision}_{args.ranks}ranks"
    out = args.out or RESULTS / f"{name}_{args.device.split(':')[0]}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
