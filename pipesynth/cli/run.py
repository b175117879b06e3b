"""Commands that need the executor (torch, imported lazily): train, profile."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from pipesynth.cli import command
from pipesynth.core.problem import PLACEMENTS, check_size, check_value, placement_for
from pipesynth.core.units import format_bytes
from pipesynth.errors import PipesynthError
from pipesynth.formats.files import check_writable, write_text_atomic
from pipesynth.formats.schedule_json import load_with_sections, save_problem

FILE = typer.Argument(..., help="A pipesynth.schedule/1 JSON file (a plan file too).", show_default=False)
REPORT = typer.Option(None, help="Write per-step losses, per-rank times and memory here (JSON).")
OUTPUT = typer.Option(..., "--output", "-o", help="Problem file to write (us, bytes).", show_default=False)
#: Most measured (and warm-up) runs of each pass `profile` takes: enough for a stable median.
MAX_REPEATS = 1000


@command()
def train(
    file: Path = FILE,
    model: str = typer.Option(
        None, help="tiny-gpt, or tiny-llama (needs transformers). Default: tiny-gpt; for a plan, its Llama."
    ),
    precision: str = typer.Option(
        None,
        help="fp32, or bf16 / fp16 under torch.autocast (fp16 with a loss scaler). Default: fp32 (GPUs: a plan's).",
    ),
    runtime: str = typer.Option("pipesynth", help="pipesynth (our executor) or torch (torch's CSV runtime)."),
    steps: int = typer.Option(20, min=1, help="Training steps."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed of the model weights and the data."),
    ranks: int = typer.Option(None, help="Ranks to start: the schedule's devices (default), or 1 for the reference."),
    microbatch_size: int = typer.Option(
        None, min=1, help="Sequences per microbatch (at most 65,536 tokens). Default: 2, or the plan's."
    ),
    lr: float = typer.Option(3e-3, help="Adam learning rate."),
    device: str = typer.Option("cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)."),
    timeout: float = typer.Option(60.0, help="Seconds any rank may wait on a peer before all ranks stop."),
    report: Path = REPORT,
) -> None:
    """Train the tiny GPT or a plan's Llama on local ranks.

    Prints the losses and each rank's peak activation memory. A plan file
    (pipesynth plan) trains its model split by its layers per stage.

    Example: pipesynth train schedules/1f1b-d4-m8.json --steps 20 --report run.json
    (--model tiny-llama --precision bf16 --runtime torch: a Hugging Face Llama, autocast, torch's runtime)
    """
    check_writable(report)
    schedule, sections = load_with_sections(file)
    plan = sections.get("plan")
    from pipesynth.runtime.launch import LaunchInterrupted
    from pipesynth.runtime.train import run_training, train_config  # torch only when training

    cfg = train_config(
        plan,
        model=model,
        precision=precision,
        microbatch_size=microbatch_size,
        steps=steps,
        seed=seed,
        lr=lr,
        runtime=runtime,
        device=device,
        timeout=timeout,
        progress=True,
    )
    cfg.check(schedule.problem.stages)
    if plan is not None:
        split = ",".join(map(str, plan.partition.layers))
        typer.echo(
            f"plan: {cfg.model} with {cfg.decoder_layers} decoder layers split {split} ({plan.placement}), "
            f"{cfg.microbatch_size} x {cfg.seq_len} tokens per microbatch, {cfg.precision} "
            f"(planned {plan.training.precision})"
        )
    try:
        result = run_training(schedule, cfg, ranks)
    except LaunchInterrupted as stop:  # every rank stopped: one line, and the report so far
        done = len(stop.report["losses"]) if stop.report else 0
        kept = ""
        if report is not None and stop.report is not None:
            write_text_atomic(report, json.dumps(stop.report, indent=2) + "\n", rescue=True)
            kept = f"; the report so far is in {report}"
        typer.echo("")  # ends the progress line
        typer.echo(f"{stop}, after {done} of {steps} steps{kept}", err=True)
        raise typer.Exit(stop.exit_code) from None
    losses = result["losses"]
    typer.echo(f"{schedule.name or file}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
    for r in result["ranks"]:
        predicted = r.get("predicted_peak_bytes")
        pred = f", predicted {predicted / 1024:.1f} KiB" if predicted is not None else ""
        step_time = sum(r["step_seconds"]) / len(r["step_seconds"])
        measured = f"peak activation {r['measured_peak_bytes'] / 1024:.1f} KiB{pred}, " if runtime != "torch" else ""
        typer.echo(f"  rank {r['rank']}: {measured}{step_time * 1000:.1f} ms/step")
    if report is not None:
        write_text_atomic(report, json.dumps(result, indent=2) + "\n", rescue=True)
        typer.echo(f"report written to {report}")


@command()
def profile(
    output: Path = OUTPUT,
    devices: int = typer.Option(..., min=1, help="Devices (ranks) the pipeline will run on."),
    microbatches: int = typer.Option(8, min=1, help="Microbatches per step in the problem."),
    placement: str = typer.Option("v", help=f"Stage placement: {', '.join(PLACEMENTS)}."),
    chunks: int = typer.Option(2, min=1, help="Stages per device with --placement loop."),
    split_backward: bool = typer.Option(True, help="Split B and W (zero-bubble, V-shape) or fuse them (1F1B)."),
    model: str = typer.Option("tiny-gpt", help="Model to profile (tiny-gpt; your own through the Python API)."),
    blocks: int = typer.Option(8, min=1, help="Transformer blocks of the tiny GPT."),
    dim: int = typer.Option(64, min=8, help="Width of the tiny GPT."),
    seq_len: int = typer.Option(32, min=1, help="Sequence length."),
    microbatch_size: int = typer.Option(2, min=1, help="Sequences per microbatch."),
    repeats: int = typer.Option(10, min=1, max=MAX_REPEATS, help="Measured runs of each pass (the median is kept)."),
    warmup: int = typer.Option(3, min=0, max=MAX_REPEATS, help="Unmeasured runs first."),
    threads: int = typer.Option(1, min=1, help="torch threads while profiling (at most the CPUs): as each rank."),
    device: str = typer.Option("cpu", help="cpu, or cuda (the stages run on the current GPU)."),
    comm: float = typer.Option(None, help="P2P latency in us; default: measure it between two local ranks."),
) -> None:
    """Profile stage times and activation bytes into a problem.

    Each stage's F, B, W times (us) and activation bytes, written as the
    planning problem that `pipesynth solve --problem` reads. The tiny GPT
    is built here: at most 50 million parameters, 65,536 tokens per
    microbatch and 2^24 hidden values (tokens x dim x blocks).

    Example: pipesynth profile --devices 2 --placement v --microbatches 8 -o problem.json
    """
    if model != "tiny-gpt":
        raise PipesynthError(f"model: unknown {model!r}; available: tiny-gpt (profile your own with the Python API)")
    check_writable(output)
    stages = len(placement_for(placement, devices, chunks))
    check_size(devices, microbatches, stages, 3 if split_backward else 2)
    if comm is not None:
        check_value(comm, "comm")
    cpus = os.cpu_count() or 1
    if threads > cpus:
        raise PipesynthError(f"threads: {threads}; this machine has {cpus} CPUs")
    import torch  # noqa: F401  (only here: `import pipesynth` must not need torch)

    from pipesynth.runtime.launch import backend_for
    from pipesynth.runtime.models import GPTConfig, MarkovText, gpt_stages, lm_loss, tiny_gpt
    from pipesynth.runtime.profile import profile_stages

    cfg = GPTConfig(seq_len=seq_len, dim=dim, blocks=blocks)
    cfg.check(microbatch_size)
    if blocks < stages:
        raise PipesynthError(
            f"model: the tiny GPT has {blocks} blocks and cannot be split into {stages} stages "
            f"({placement} on {devices} devices); give --blocks {stages} or more"
        )
    backend_for(device)  # a device torch cannot use is bad input
    modules = [m.to(device) for m in gpt_stages(tiny_gpt(cfg, seed=0), stages)]
    x, y = MarkovText(cfg.vocab, 0).batch(0, microbatch_size, seq_len)
    result = profile_stages(modules, x, y, lm_loss, repeats=repeats, warmup=warmup, threads=threads, comm=comm)
    problem = result.problem(devices, microbatches, placement, chunks=chunks, split_backward=split_backward)
    save_problem(problem, output, rescue=True)
    typer.echo(f"{'stage':>5} {'device':>6} {'F us':>8} {'B us':>8} {'W us':>8} {'activation':>24}")
    for p, d, act in zip(result.stages, problem.placement, problem.activation):
        typer.echo(
            f"{p.stage:>5} {d:>6} {p.forward_us:>8.0f} {p.backward_us:>8.0f} {p.weight_us:>8.0f} "
            f"{format_bytes(act):>24}"
        )
    typer.echo(f"comm (P2P latency of the boundary tensor): {problem.comm:g} us")
    typer.echo(f"problem written to {output}")
