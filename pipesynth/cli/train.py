"""`pipesynth train`: run a schedule file on local ranks with the tiny GPT (torch imported lazily)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipesynth.cli import command
from pipesynth.errors import PipesynthError
from pipesynth.schedule_file import load, write_text_atomic

FILE = typer.Argument(..., help="A pipesynth.schedule/1 JSON file.", show_default=False)
REPORT = typer.Option(None, help="Write per-step losses, per-rank times and memory here (JSON).")


@command()
def train(
    file: Path = FILE,
    model: str = typer.Option("tiny-gpt", help="Model to train (tiny-gpt)."),
    steps: int = typer.Option(20, min=1, help="Training steps."),
    seed: int = typer.Option(0, help="Seed of the model weights and the data."),
    ranks: int = typer.Option(None, help="Ranks to start: the schedule's devices (default), or 1 for the reference."),
    microbatch_size: int = typer.Option(2, min=1, help="Sequences per microbatch."),
    lr: float = typer.Option(3e-3, help="Adam learning rate."),
    device: str = typer.Option("cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)."),
    timeout: float = typer.Option(60.0, help="Seconds any rank may wait on a peer before all ranks stop."),
    report: Path = REPORT,
) -> None:
    """Train a model with a schedule on this machine's ranks; print losses and peak activation memory.

    Example: pipesynth train schedules/1f1b-d4-m8.json --steps 20 --report run.json
    """
    if model != "tiny-gpt":
        raise PipesynthError(f"model: unknown {model!r}; available: tiny-gpt")
    schedule = load(file)
    from pipesynth.runtime.train import TrainConfig, run_training  # torch only when training

    cfg = TrainConfig(
        steps=steps, seed=seed, microbatch_size=microbatch_size, lr=lr, device=device, timeout=timeout, progress=True
    )
    result = run_training(schedule, cfg, ranks)
    losses = result["losses"]
    typer.echo(f"{schedule.name or file}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
    for r in result["ranks"]:
        predicted = r.get("predicted_peak_bytes")
        pred = f", predicted {predicted / 1024:.1f} KiB" if predicted is not None else ""
        step_time = sum(r["step_seconds"]) / len(r["step_seconds"])
        typer.echo(
            f"  rank {r['rank']}: peak activation {r['measured_peak_bytes'] / 1024:.1f} KiB{pred}, "
            f"{step_time * 1000:.1f} ms/step"
        )
    if report is not None:
        write_text_atomic(report, json.dumps(result, indent=2) + "\n")
        typer.echo(f"report written to {report}")
