"""Profile -> solve -> train: plan a pipeline schedule for your own model, then train with it under torchrun.

Step 1, once, on one machine (profiles each stage and solves; writes the schedule next to this script):

    python examples/train_with_plan.py plan --devices 2 --microbatches 8 --memory 6MiB

Step 2, on every node (each rank loads the same schedule file and runs its device's passes):

    torchrun --nproc-per-node 2 examples/train_with_plan.py train --steps 20

Replace `build_stages` with your model cut into stages (first stage: embedding, last: head; the loss
runs on the last stage's rank). Step 1 must use the stage split, microbatch size and device kind
that step 2 uses: the plan is only as good as the profile.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from pipesynth.formats.schedule_json import load, save
from pipesynth.runtime.executor import PipelineExecutor
from pipesynth.runtime.launch import init_from_env
from pipesynth.runtime.models import GPTConfig, MarkovText, gpt_stages, lm_loss, tiny_gpt
from pipesynth.runtime.planner import plan_pipeline

SCHEDULE = Path(__file__).with_name("pipeline.json")
CONFIG = GPTConfig(vocab=64, seq_len=32, dim=64, heads=4, blocks=8)
MICROBATCH_SIZE = 4  # sequences per microbatch


def build_stages(count: int, seed: int = 0) -> list[nn.Module]:
    """Your model as `count` stage modules, the same on every rank (same seed, same weights)."""
    return gpt_stages(tiny_gpt(CONFIG, seed), count)


def plan(args: argparse.Namespace) -> None:
    stages_per_device = 2 if args.placement == "v" else 1
    stages = build_stages(args.devices * stages_per_device)
    data = MarkovText(CONFIG.vocab, seed=0)
    sample, target = data.batch(0, MICROBATCH_SIZE, CONFIG.seq_len)  # one microbatch
    schedule = plan_pipeline(
        stages,
        sample,
        target,
        lm_loss,
        devices=args.devices,
        microbatches=args.microbatches,
        memory=args.memory,
        placement=args.placement,
        threads=1,  # what each rank will use
        time_limit=args.time_limit,
    )
    save(schedule, SCHEDULE)
    m = schedule.metrics
    method = schedule.provenance["method"]
    print(f"planned {method}: step {m.makespan / 1e3:.1f} ms (simulated), bubble {m.bubble_rate:.1%}")
    print("peak activation per device:", ", ".join(f"{p / 2**20:.2f} MiB" for p in m.peak_memory))
    for name, makespan in sorted(schedule.provenance["handcrafted_makespan"].items()):
        print(f"  handcrafted {name} under the same budget: {makespan / 1e3:.1f} ms")
    print(f"schedule written to {SCHEDULE}")


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    rank, world, device = init_from_env(args.device)
    schedule = load(SCHEDULE)
    stages = build_stages(schedule.problem.stages)
    mine = {s: stages[s].to(device) for s in schedule.problem.stages_on(rank)}
    executor = PipelineExecutor(schedule, mine, lm_loss, device=device)
    optimizer = torch.optim.Adam([p for m in mine.values() for p in m.parameters()], lr=3e-3)
    data = MarkovText(CONFIG.vocab, seed=0)
    batch = schedule.problem.microbatches * MICROBATCH_SIZE
    for step in range(args.steps):
        x, y = data.batch(step, batch, CONFIG.seq_len)
        optimizer.zero_grad(set_to_none=True)
        loss = executor.step(x, target=y)  # None on ranks without the last stage
        optimizer.step()
        if loss is not None and (step % 5 == 0 or step == args.steps - 1):
            stats = executor.stats
            print(
                f"step {step}: loss {loss.item():.4f}, {stats.seconds * 1e3:.0f} ms, "
                f"peak activation {stats.peak_bytes / 2**20:.2f} MiB on rank {rank}"
            )
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="Profile the stages and solve for a schedule (one process).")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--microbatches", type=int, default=8)
    p.add_argument("--memory", default=None, help="Activation budget per device: 6MiB, 12GiB, 0.5x (default: none).")
    p.add_argument("--placement", default="v", choices=["v", "linear"])
    p.add_argument("--time-limit", type=float, default=10.0, help="Solver seconds.")
    t = sub.add_parser("train", help="Train with the planned schedule (run under torchrun).")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank).")
    args = parser.parse_args()
    if args.command == "plan":
        plan(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
