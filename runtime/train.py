"""Train the tiny GPT with a schedule on local ranks (`pipesynth train`), or unpipelined as the reference.

Every rank builds the whole model and the data from the seed, so the same
seed gives the same model, batches and (up to float rounding) losses
whatever the schedule; `ranks=1` trains the same model in one process on
the same batches.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from pipesynth.core.schedule import Schedule
from pipesynth.errors import PipesynthError
from pipesynth.formats.schedule_json import dumps, loads
from pipesynth.runtime.executor import PipelineExecutor
from pipesynth.runtime.launch import LaunchInterrupted, launch, report_progress
from pipesynth.runtime.memory import ActivationMeter
from pipesynth.runtime.models import GPTConfig, MarkovText, gpt_stages, lm_loss, tiny_gpt

MODELS = ("tiny-gpt",)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the model, the data and the optimizer."""

    steps: int = 20
    seed: int = 0
    microbatch_size: int = 2
    lr: float = 3e-3
    gpt: GPTConfig = field(default_factory=GPTConfig)
    device: str = "cpu"
    timeout: float = 60.0
    progress: bool = False


def train_rank(rank: int, world: int, device: torch.device, schedule_text: str, cfg: TrainConfig) -> dict:
    """One rank's training loop; returns its losses (last stage), times and memory figures.

    With one rank it trains the whole model unpipelined on the schedule's
    batch (microbatches x microbatch size) in one piece: the reference.
    """
    pipelined = loads(schedule_text)
    batch = pipelined.problem.microbatches * cfg.microbatch_size
    schedule = pipelined if world > 1 else None
    layers = [layer.to(device) for layer in tiny_gpt(cfg.gpt, cfg.seed)]
    data = MarkovText(cfg.gpt.vocab, cfg.seed)
    executor = None
    if schedule is None:
        model = nn.Sequential(*layers)
        mine = {0: model}
        meter = ActivationMeter()
        meter.exclude([*model.parameters(), *model.buffers()])
    else:
        stages = gpt_stages(layers, schedule.problem.stages)
        mine = {s: stages[s] for s in schedule.problem.stages_on(rank)}
        executor = PipelineExecutor(schedule, mine, lm_loss, device=device, timeout=cfg.timeout)
    params = [p for mod in mine.values() for p in mod.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    losses: list[float] = []
    seconds: list[float] = []
    peak = 0
    for step in range(cfg.steps):
        x, y = data.batch(step, batch, cfg.gpt.seq_len)
        optimizer.zero_grad(set_to_none=True)
        if schedule is None:
            start = time.perf_counter()
            meter.reset_peak()
            with meter.saving():
                loss = lm_loss(model(x.to(device)), y.to(device))
            loss.backward()
            seconds.append(time.perf_counter() - start)
            peak = max(peak, meter.peak)
            if not math.isfinite(loss.item()):
                raise ValueError(f"step {step}: the loss is {loss.item()}")
        else:
            loss = executor.step(x, y)
            seconds.append(executor.stats.seconds)
            peak = max(peak, executor.stats.peak_bytes)
        optimizer.step()
        if loss is not None:
            losses.append(loss.item())
            if cfg.progress:
                _progress(step + 1, cfg.steps, losses, seconds)
        report_progress(_rank_report(rank, sorted(mine), seconds, peak, losses, executor))
    return _rank_report(rank, sorted(mine), seconds, peak, losses, executor)


def _rank_report(
    rank: int, stages: list[int], seconds: list[float], peak: int, losses: list[float], executor: Any
) -> dict[str, Any]:
    """One rank's figures so far (with the executor's predictions when pipelined)."""
    report: dict[str, Any] = {"rank": rank, "stages": stages, "step_seconds": list(seconds)}
    report["measured_peak_bytes"] = peak
    if executor is not None:
        report["predicted_peak_bytes"] = executor.predicted_peak_bytes()
        report["stage_bytes"] = {str(s): list(b) for s, b in sorted(executor.stage_bytes().items())}
        if executor.stats.cuda_peak_bytes is not None:
            report["cuda_peak_bytes"] = executor.stats.cuda_peak_bytes
    if losses:
        report["losses"] = list(losses)
    return report


def _progress(step: int, steps: int, losses: list[float], seconds: list[float]) -> None:
    width = 24
    done = width * step // steps
    bar = "#" * done + "." * (width - done)
    line = f"\r  [{bar}] step {step}/{steps}  loss {losses[-1]:.4f}  {sum(seconds) / len(seconds):.3f} s/step"
    sys.stdout.write(line + ("\n" if step == steps else ""))
    sys.stdout.flush()


def run_training(schedule: Schedule, cfg: TrainConfig, ranks: int | None = None) -> dict[str, Any]:
    """Train on `schedule.problem.devices` local ranks (or 1: the unpipelined reference); return the report."""
    ranks = schedule.problem.devices if ranks is None else ranks
    if ranks not in (1, schedule.problem.devices):
        raise PipesynthError(
            f"ranks: the schedule runs on {schedule.problem.devices} ranks; give that or 1 (the unpipelined reference)"
        )
    try:
        per_rank = launch(train_rank, ranks, dumps(schedule), cfg, device=cfg.device, timeout=cfg.timeout)
    except LaunchInterrupted as stop:  # the report so far, for the caller to keep
        stop.report = _report(schedule, cfg, ranks, [r for r in stop.partial if r is not None])
        raise
    return _report(schedule, cfg, ranks, per_rank)


def _report(schedule: Schedule, cfg: TrainConfig, ranks: int, per_rank: list[dict]) -> dict[str, Any]:
    """The run's report from the ranks' ones: the losses (of the last stage's rank) once, then each rank's figures."""
    losses = next((r["losses"] for r in per_rank if "losses" in r), [])
    for r in per_rank:
        r.pop("losses", None)
    return {
        "schedule": schedule.name,
        "model": "tiny-gpt",
        "mode": "pipeline" if ranks > 1 else "reference",
        "config": {**asdict(cfg), "microbatches": schedule.problem.microbatches},
        "losses": losses,
        "ranks": per_rank,
    }


def main() -> None:
    """Under torchrun: `torchrun --nproc-per-node 4 -m pipesynth.runtime.train FILE --steps 20`."""
    import argparse
    import json

    import torch.distributed as dist

    from pipesynth.formats.schedule_json import load
    from pipesynth.runtime.launch import init_from_env

    parser = argparse.ArgumentParser(description="Train the tiny GPT with a schedule, one process per rank.")
    parser.add_argument("file")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, LOCAL_RANK's GPU)")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    cfg = TrainConfig(steps=args.steps, seed=args.seed, device=args.device, timeout=args.timeout, progress=True)
    rank, world, device = init_from_env(args.device, args.timeout)
    try:
        report = train_rank(rank, world, device, dumps(load(args.file)), cfg)
    finally:
        dist.destroy_process_group()
    print(json.dumps({k: v for k, v in report.items() if k != "step_seconds"}))


if __name__ == "__main__":
    main()
