"""Benchmark 3: what splitting the backward costs on a real stage: (B + W) time / fused backward time.

The stage is a run of tiny-GPT blocks (attention + MLP, every weight in a
split layer), or with `--model llama` of Hugging Face Llama decoder layers
(RMSNorm weights computed in B, rotary embeddings and the causal mask as
further inputs without gradient). Fused: one backward with the split layers computing weight
gradients at once. Split: B (input gradient, weight products queued) then W
(the queue). Both run the same module on the same input, interleaved, and
we report medians. Target: ratio <= 1.10.

    python benchmarks/bw_split.py                    # CPU
    python benchmarks/bw_split.py --model llama      # Llama decoder layers (needs transformers)
    python benchmarks/bw_split.py --device cuda      # a GPU (records the card)
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from pipesynth.runtime.models import Block, GPTConfig
from pipesynth.runtime.split import deferring, make_splittable

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    stage: dict[str, nn.Module], x: torch.Tensor, extra: tuple, grad: torch.Tensor, repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds of the fused backward, of B and of W, interleaved repeat by repeat."""
    times: dict[str, list[float]] = {"fused": [], "B": [], "W": [], "plain": []}
    plain = stage["plain"]
    split = stage["split"]
    for i in range(warmup + repeats):
        for mode in ("fused", "split", "plain"):
            for p in (*plain.parameters(), *split.parameters()):
                p.grad = None
            inp = x.detach().requires_grad_(True)
            out = (plain if mode == "plain" else split)(inp, *extra)
            out = out[0] if isinstance(out, tuple) else out
            sync(x.device)
            start = time.perf_counter()
            if mode == "split":
                queue = []
                with deferring(queue):
                    out.backward(grad)
                sync(x.device)
                mid = time.perf_counter()
                for task in queue:
                    task()
                sync(x.device)
                end = time.perf_counter()
                if i >= warmup:
                    times["B"].append(mid - start)
                    times["W"].append(end - mid)
            else:
                out.backward(grad)
                sync(x.device)
                if i >= warmup:
                    times[mode].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def gpt_blocks(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module, tuple]:
    """Two stacks of tiny-GPT blocks (the plain one and the one to split) and their extra inputs (none)."""
    cfg = GPTConfig(vocab=64, seq_len=args.seq, dim=args.dim, heads=args.heads, blocks=args.blocks)
    torch.manual_seed(0)
    stacks = [nn.Sequential(*(Block(cfg) for _ in range(args.blocks))).to(device) for _ in range(2)]
    return stacks[0], stacks[1], ()


def llama_layers(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module, tuple]:
    """Two middle stages of Llama decoder layers, and their extra inputs: rotary cos, sin and the causal mask."""
    from pipesynth.runtime.llama import LlamaSize, llama_stages, tiny_llama

    size = LlamaSize(
        hidden=args.dim,
        intermediate=4 * args.dim,
        layers=args.blocks,
        heads=args.heads,
        kv_heads=args.heads,
        max_positions=args.seq,
    )
    stacks = []
    for _ in range(2):
        model = tiny_llama(size, 0).to(device)
        stacks.append(llama_stages(model, [0, args.blocks, 0])[1])
    ids = torch.zeros(args.batch, args.seq, dtype=torch.long, device=device)
    _, cos, sin, mask = llama_stages(tiny_llama(size, 0).to(device), [0, args.blocks, 0])[0](ids)
    return stacks[0], stacks[1], (cos.detach(), sin.detach(), mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", default="gpt", choices=["gpt", "llama"], help="tiny-GPT blocks or Llama layers")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (steadier on a shared machine)")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: results/bw_split_<device>.md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plain, split, extra = (llama_layers if args.model == "llama" else gpt_blocks)(args, device)
    split.load_state_dict(plain.state_dict())
    make_splittable(split)
    x = torch.randn(args.batch, args.seq, args.dim, device=device)
    grad = torch.randn(args.batch, args.seq, args.dim, device=device)
    t = measure({"plain": plain, "split": split}, x, extra, grad, args.repeats, args.warmup)
    ratio = (t["B"] + t["W"]) / t["fused"]
    what = "Llama decoder layers (transformers)" if args.model == "llama" else "tiny-GPT blocks"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [
        "# Benchmark 3: B/W split cost on a real stage",
        "",
        "Command: `python " + " ".join(shlex.quote(a) for a in ["benchmarks/bw_split.py", *sys.argv[1:]]) + "`",
        "",
        f"Stage: {args.blocks} {what}, dim {args.dim}, {args.heads} heads, sequence {args.seq}, "
        f"batch {args.batch}, float32 on {card}; torch {torch.__version__}; median of {args.repeats} "
        f"interleaved repeats after {args.warmup} warm-up.",
        "",
        "| backward | ms |",
        "|---|---|",
        f"| fused (split layers, no deferral) | {t['fused'] * 1e3:.2f} |",
        f"| plain torch layers (nn.Linear etc.), fused | {t['plain'] * 1e3:.2f} |",
        f"| B (input gradient, weight products queued) | {t['B'] * 1e3:.2f} |",
        f"| W (queued weight products) | {t['W'] * 1e3:.2f} |",
        f"| B + W | {(t['B'] + t['W']) * 1e3:.2f} |",
        "",
        f"**(B + W) / fused = {ratio:.3f}** (target <= 1.10); fused split layers / plain torch layers = "
        f"{t['fused'] / t['plain']:.3f}.",
        f"Machine: load average (1 min) {os.getloadavg()[0]:.1f} at the end; both backwards run interleaved, "
        "so the ratio compares them under the same load.",
        "",
    ]
    suffix = "_llama" if args.model == "llama" else ""
    out = args.out or RESULTS / f"bw_split_{device.type}{suffix}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
