"""Train a model (the tiny GPT, or a tiny Hugging Face Llama) with a schedule on local ranks
(`pipesynth train`), or unpipelined as the reference.

Every rank builds the whole model and the data from the seed, so the same
seed gives the same model, batches and (up to float rounding) losses
whatever the schedule; `ranks=1` trains the same model in one process on
the same batches. A plan file (`pipesynth plan`) gives more than the
schedule: `train_config` takes the model (the plan's Llama), its split into
stages, the sequence length, the microbatch size and the precision from
it, where the caller does not (docs/design.md section 9).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from torch import nn

from pipesynth.core.schedule import Schedule
from pipesynth.errors import PipesynthError
from pipesynth.formats.schedule_json import dumps, loads
from pipesynth.plan.partition import Partition
from pipesynth.plan.plan_file import PlanSection, layers_per_stage, split_by_partition
from pipesynth.runtime.launch import LaunchInterrupted, launch, report_progress
from pipesynth.runtime.llama import LlamaSize, llama_size
from pipesynth.runtime.memory import ActivationMeter
from pipesynth.runtime.models import (
    GPTConfig,
    MarkovText,
    check_tokens,
    even_counts,
    gpt_stages,
    lm_loss,
    tiny_gpt,
)

MODELS = ("tiny-gpt", "tiny-llama")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # the autocast dtype
RUNTIMES = ("pipesynth", "torch")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the model, the data and the optimizer."""

    steps: int = 20
    seed: int = 0
    microbatch_size: int = 2
    lr: float = 3e-3
    gpt: GPTConfig = field(default_factory=GPTConfig)
    model: str = "tiny-gpt"
    llama: LlamaSize = field(default_factory=LlamaSize)
    precision: str = "fp32"  # fp32, or bf16 / fp16 under torch.autocast (fp16 with a loss scaler)
    runtime: str = "pipesynth"  # our executor, or torch's _PipelineScheduleRuntime (torch_schedule)
    device: str = "cpu"
    timeout: float = 60.0
    progress: bool = False
    layers_per_stage: tuple[int, ...] | None = None  # decoder layers (GPT blocks) per stage; None: even
    sequence_length: int | None = None  # tokens per sequence; None: the GPT's seq_len (at most the Llama's positions)

    def check(self, stages: int | None = None) -> None:
        """A PipesynthError naming the field at fault (`stages`: the schedule's, when known)."""
        if self.model not in MODELS:
            raise PipesynthError(f"model: unknown {self.model!r}; available: {', '.join(MODELS)}")
        if self.precision not in PRECISIONS:
            raise PipesynthError(f"precision: unknown {self.precision!r}; available: {', '.join(PRECISIONS)}")
        if self.runtime not in RUNTIMES:
            raise PipesynthError(f"runtime: unknown {self.runtime!r}; available: {', '.join(RUNTIMES)}")
        if self.model == "tiny-llama" and importlib.util.find_spec("transformers") is None:
            raise PipesynthError("model: tiny-llama needs transformers (pip install transformers)")
        if self.layers_per_stage is not None:
            layers_per_stage(Partition(self.layers_per_stage), self.decoder_layers)
            if stages not in (None, len(self.layers_per_stage)):
                raise PipesynthError(
                    f"layers_per_stage: {len(self.layers_per_stage)} stages, but the schedule has {stages}"
                )
        most = self.gpt.seq_len if self.model == "tiny-gpt" else self.llama.max_positions
        if self.sequence_length is not None and not 0 < self.sequence_length <= most:
            raise PipesynthError(f"sequence_length: {self.sequence_length}; the {self.model} takes 1 to {most} tokens")
        if self.microbatch_size < 1:
            raise PipesynthError(f"microbatch_size: must be at least 1, got {self.microbatch_size}")
        if self.model == "tiny-gpt":
            self.gpt.check(self.microbatch_size)  # its tokens too: seq_len is at most the GPT's
        else:
            check_tokens(self.microbatch_size, self.seq_len, "microbatch_size")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise PipesynthError(f"lr: must be a positive finite learning rate, got {self.lr!r}")

    @property
    def vocab(self) -> int:
        return self.gpt.vocab if self.model == "tiny-gpt" else self.llama.vocab

    @property
    def decoder_layers(self) -> int:
        return self.gpt.blocks if self.model == "tiny-gpt" else self.llama.layers

    @property
    def seq_len(self) -> int:
        if self.sequence_length is not None:
            return self.sequence_length
        return self.gpt.seq_len if self.model == "tiny-gpt" else min(self.gpt.seq_len, self.llama.max_positions)


def train_config(
    plan: PlanSection | None = None,
    *,
    model: str | None = None,
    precision: str | None = None,
    microbatch_size: int | None = None,
    **settings: Any,
) -> TrainConfig:
    """A TrainConfig from a command line's options (None: not given) and a schedule file's plan, if any.

    Without a plan: the tiny GPT, fp32, 2 sequences per microbatch. With a
    plan: its Llama (`llama.llama_size`; or the tiny GPT when asked, whose
    blocks must then number the plan's decoder layers), split by its
    `layers_per_stage`, its sequence length (the Llama's) and microbatch
    size, and `plan_precision` of its precision.
    """
    if plan is None:
        return TrainConfig(
            model=model or "tiny-gpt", precision=precision or "fp32", microbatch_size=microbatch_size or 2, **settings
        )
    t = plan.training
    check_tokens(t.microbatch_size, t.seq_len, "plan.training")
    model = model or "tiny-llama"
    if model == "tiny-llama":
        settings = {"llama": llama_size(plan), "sequence_length": plan.training.seq_len, **settings}
    return TrainConfig(
        model=model,
        precision=precision or plan_precision(plan.training.precision, settings.get("device", "cpu")),
        microbatch_size=microbatch_size or plan.training.microbatch_size,
        layers_per_stage=plan.partition.layers,
        **settings,
    )


def plan_precision(planned: str, device: str) -> str:
    """The precision to train a plan in: fp32 on CPUs (bf16 there is slow, and the plan's figures are for
    GPUs); on GPUs bf16 autocast for `bf16-autocast` and for pure `bf16` (the executor keeps fp32 weights),
    else fp32."""
    if device == "cpu" or planned == "fp32":
        return "fp32"
    return "bf16"


def build_model(cfg: TrainConfig, stages: int, device: torch.device) -> tuple[nn.Module, list[nn.Module]]:
    """The whole model (the reference) and its `stages` pipeline stages, sharing their parameters."""
    split = cfg.layers_per_stage if stages > 1 else None
    if cfg.model == "tiny-gpt":
        layers = [layer.to(device) for layer in tiny_gpt(cfg.gpt, cfg.seed)]
        if split is not None:  # [embedding, blocks..., head] cut as a plan cuts a Llama
            return nn.Sequential(*layers), [nn.Sequential(*s) for s in split_by_partition(layers, Partition(split))]
        return nn.Sequential(*layers), gpt_stages(layers, stages) if stages > 1 else [nn.Sequential(*layers)]
    from pipesynth.runtime.llama import LlamaLM, llama_stages, tiny_llama

    model = tiny_llama(cfg.llama, cfg.seed).to(device)
    if stages == 1:
        return LlamaLM(model), []
    return LlamaLM(model), llama_stages(model, split or even_counts(cfg.llama.layers, stages))


def train_rank(rank: int, world: int, device: torch.device, schedule_text: str, cfg: TrainConfig) -> dict:
    """One rank's training loop; returns its losses (last stage), times and memory figures.

    With one rank it trains the whole model unpipelined on the schedule's
    batch (microbatches x microbatch size) in one piece: the reference.
    """
    pipelined = loads(schedule_text)
    cfg.check(pipelined.problem.stages)
    batch = pipelined.problem.microbatches * cfg.microbatch_size
    schedule = pipelined if world > 1 else None
    model, stages = build_model(cfg, pipelined.problem.stages if schedule is not None else 1, device)
    data = MarkovText(cfg.vocab, cfg.seed)
    autocast = PRECISIONS[cfg.precision]
    scaler = None
    executor = None  # the unpipelined reference has none
    if schedule is None:
        mine = {0: model}
        meter = ActivationMeter()
        meter.exclude([*model.parameters(), *model.buffers()])
        if autocast == torch.float16:
            scaler = torch.amp.GradScaler(device.type)
    else:
        from pipesynth.runtime.torch_pipelining import torch_schedule

        mine = {s: stages[s] for s in schedule.problem.stages_on(rank)}
        if autocast == torch.float16:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device.type)  # every rank skips the same steps
        runner = torch_schedule(
            schedule, mine, lm_loss, runtime=cfg.runtime, device=device, timeout=cfg.timeout, scaler=scaler
        )
        executor = runner.executor
    params = [p for mod in mine.values() for p in mod.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    losses: list[float] = []
    seconds: list[float] = []
    peak = 0
    progress = StepProgress(cfg.steps) if cfg.progress else None
    for step in range(cfg.steps):
        x, y = data.batch(step, batch, cfg.seq_len)
        optimizer.zero_grad(set_to_none=True)
        precision = torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext()
        if schedule is None:
            start = time.perf_counter()
            meter.reset_peak()
            with meter.saving(), precision:
                loss = lm_loss(model(x.to(device)), y.to(device))
            (scaler.scale(loss) if scaler is not None else loss).backward()
            seconds.append(time.perf_counter() - start)
            peak = max(peak, meter.peak)
            if not math.isfinite(loss.item()):
                raise ValueError(f"step {step}: the loss is {loss.item()}")
        else:
            microbatch_losses: list[torch.Tensor] = []
            start = time.perf_counter()
            with precision:
                runner.step(x, target=y, losses=microbatch_losses, return_outputs=False)
            seconds.append(executor.stats.seconds if executor is not None else time.perf_counter() - start)
            peak = max(peak, executor.stats.peak_bytes if executor is not None else 0)
            loss = torch.stack(microbatch_losses).mean() if microbatch_losses else None
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if loss is not None:
            losses.append(loss.item())
            if progress is not None:
                progress.step(step + 1, losses[-1], sum(seconds) / len(seconds))
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


class StepProgress:
    """Training progress of the rank that sees the loss: a live bar (rich) on a terminal, else a
    `pipesynth.runtime.train` log line per step, so logs get whole lines and no carriage returns."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.bar: Progress | None = None

    def step(self, step: int, loss: float, seconds_per_step: float) -> None:
        status = f"loss {loss:.4f}  {seconds_per_step:.3f} s/step"
        if not sys.stdout.isatty():
            log.info("step %d/%d  %s", step, self.steps, status)
            return
        if self.bar is None:
            self.bar = Progress(
                TextColumn("  step"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}")
            )
            self.task = self.bar.add_task("train", total=self.steps, status="")
            self.bar.start()
        self.bar.update(self.task, completed=step, status=status)
        if step == self.steps:
            self.bar.stop()


def run_training(schedule: Schedule, cfg: TrainConfig, ranks: int | None = None) -> dict[str, Any]:
    """Train on `schedule.problem.devices` local ranks (or 1: the unpipelined reference); return the report."""
    cfg.check(schedule.problem.stages)
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
        "model": cfg.model,
        "mode": "pipeline" if ranks > 1 else "reference",
        "config": {**asdict(cfg), "microbatches": schedule.problem.microbatches},
        "losses": losses,
        "ranks": per_rank,
    }


def main() -> None:
    """Under torchrun: `torchrun --nproc-per-node 4 -m pipesynth.runtime.train FILE --steps 20` (a plan
    file trains its model as `pipesynth train` does)."""
    import argparse
    import json

    import torch.distributed as dist

    from pipesynth.formats.schedule_json import load_with_sections
    from pipesynth.runtime.launch import init_from_env

    parser = argparse.ArgumentParser(description="Train a tiny model with a schedule, one process per rank.")
    parser.add_argument("file")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, LOCAL_RANK's GPU)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--model", default=None, choices=MODELS, help="default: tiny-gpt; a plan's Llama for a plan")
    parser.add_argument("--precision", default=None, choices=list(PRECISIONS), help="fp32, or autocast bf16/fp16")
    parser.add_argument("--microbatch-size", type=int, default=None, help="default: 2, or the plan's")
    parser.add_argument("--runtime", default="pipesynth", choices=RUNTIMES, help="our executor or torch's runtime")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # an entry point: the progress lines
    schedule, sections = load_with_sections(args.file)
    cfg = train_config(
        sections.get("plan"),
        model=args.model,
        precision=args.precision,
        microbatch_size=args.microbatch_size,
        steps=args.steps,
        seed=args.seed,
        runtime=args.runtime,
        device=args.device,
        timeout=args.timeout,
        progress=True,
    )
    rank, world, device = init_from_env(args.device, args.timeout)
    try:
        report = train_rank(rank, world, device, dumps(schedule), cfg)
    finally:
        dist.destroy_process_group()
    print(json.dumps({k: v for k, v in report.items() if k != "step_seconds"}))


if __name__ == "__main__":
    main()
