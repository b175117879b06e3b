"""`pipesynth plan`: a model's config.json and the GPUs in, the layer split and schedule that fit out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipesynth.cli import command
from pipesynth.core.units import parse_bytes
from pipesynth.errors import PipesynthError
from pipesynth.formats.schedule_json import load_problem
from pipesynth.plan.costs import model_costs, with_profile
from pipesynth.plan.job import ATTENTION, OPTIMIZERS, PRECISIONS, RECOMPUTE, Device, Job, Training, read_hf_config
from pipesynth.plan.plan_file import megatron_layout, save_plan
from pipesynth.plan.search import NOT_BUILT, Candidate, PlanResult, plan_job, plan_output


def _bytes(text: str, option: str) -> float:
    """`80GiB`, `40GB` or a plain number of bytes."""
    try:
        size = parse_bytes(text)
        return float(text) if size is None else size
    except (PipesynthError, ValueError):
        raise PipesynthError(f"{option}: cannot read {text!r}; give a size such as 80GiB or 40GB") from None


def gib(value: float) -> str:
    """Bytes as GiB with one decimal: the table's unit."""
    return f"{value / 2**30:.1f} GiB"


def _row(c: Candidate, budget: float, title: str) -> str:
    device = max(range(len(c.total)), key=lambda d: c.total[d])
    peak = f"{gib(c.total[device])} = {gib(c.static[device])} + {gib(c.activation[device])} (GPU {device})"
    fits = "yes" if c.fits(budget) else f"no (+{gib(c.total[device] - budget)})"
    split = ",".join(str(n) for n in c.partition.layers)
    if len(split) > 34:
        split = split[:31] + "..."
    return (
        f"{title:<28} {c.layout.label:<8} {split:<34} {fits:<16} {peak:<42} "
        f"{c.makespan / 1000:>10.1f} ms {c.metrics.bubble_rate:>7.3f}"
    )


def print_table(result: PlanResult) -> None:
    job, budget = result.job, result.job.device.budget
    t = job.training
    typer.echo(
        f"{job.model.name}: {job.model.layers} decoder layers on {job.gpus} GPUs, {t.microbatches} microbatches of "
        f"{t.microbatch_size} x {t.seq_len} tokens, {t.precision}, {t.optimizer}, recompute {t.recompute}; "
        f"budget {gib(budget)} per GPU"
    )
    typer.echo(f"predicted from the {result.costs.source} cost model (docs/design.md section 9), not measured")
    header = (
        f"{'schedule':<28} {'place':<8} {'decoder layers per stage':<34} {'fits':<16} "
        f"{'peak per GPU = static + activation':<42} {'step time':>13} {'bubble':>7}"
    )
    typer.echo(header)
    typer.echo(_row(result.plan, budget, f"plan: {result.plan.label}"))
    for base in sorted(result.baselines, key=lambda b: (not b.fits(budget), b.makespan)):
        typer.echo(_row(base, budget, f"{base.label} (even)"))
    for name, why in result.skipped.items():
        typer.echo(f"{name + ' (even)':<28} {why if why == NOT_BUILT else 'not applicable: ' + why}")
    fitting = [b for b in result.baselines if b.fits(budget)]
    if fitting:
        best = min(fitting, key=lambda b: b.makespan)
        gain = 1 - result.plan.makespan / best.makespan
        typer.echo(f"plan vs the best evenly split schedule that fits ({best.label}): {100 * gain:.1f}% shorter step")
    elif NOT_BUILT in result.skipped.values():
        typer.echo("none of the evenly split schedules built within the time limit fits this budget; the plan does")
    else:
        typer.echo("no evenly split handcrafted schedule fits this budget; the plan does")
    quick = result.recompute_hint
    if quick is not None and quick.makespan < 0.95 * result.plan.makespan:
        typer.echo(
            f"hint: with --recompute full, {quick.label} on layers {','.join(map(str, quick.partition.layers))} "
            f"predicts {quick.makespan / 1000:.1f} ms ({100 * (1 - quick.makespan / result.plan.makespan):.0f}% "
            "shorter): memory, not compute, limits this plan"
        )


@command()
def plan(
    hf_config: Annotated[Path, typer.Option("--hf-config", help="The model's Hugging Face config.json.")],
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.", min=1)],
    microbatches: Annotated[int, typer.Option("--microbatches", "-m", help="Microbatches per step.", min=1)],
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs in the pipeline (pipeline-parallel degree).", min=1)],
    gpu_memory: Annotated[str, typer.Option("--gpu-memory", help="Memory per GPU, e.g. 80GiB.")],
    tflops: Annotated[float, typer.Option("--tflops", help="Peak dense bf16 TFLOP/s per GPU.", min=0.001)],
    microbatch_size: Annotated[int, typer.Option("--microbatch-size", help="Sequences per microbatch.", min=1)] = 1,
    mfu: Annotated[float, typer.Option("--mfu", help="Share of the peak the matmuls reach.", min=0.001, max=1)] = 0.45,
    precision: Annotated[str, typer.Option(help=f"{' | '.join(PRECISIONS)}.")] = "bf16-autocast",
    optimizer: Annotated[str, typer.Option(help=f"{' | '.join(OPTIMIZERS)} (sgd with momentum).")] = "adamw",
    recompute: Annotated[str, typer.Option(help=f"Activation recompute: {' | '.join(RECOMPUTE)}.")] = "none",
    zero: Annotated[int, typer.Option(help="Data-parallel ranks sharing the optimizer states (ZeRO-1).", min=1)] = 1,
    attention: Annotated[str, typer.Option(help=f"Attention kernel: {' | '.join(ATTENTION)}.")] = "flash",
    reserve: Annotated[str, typer.Option(help="Memory per GPU kept out of the plan (CUDA context, buffers).")] = "0",
    bandwidth: Annotated[str, typer.Option(help="P2P bandwidth between neighbours, bytes per second.")] = "50GB",
    latency: Annotated[float, typer.Option(help="P2P latency between neighbours, microseconds.", min=0)] = 10.0,
    hbm: Annotated[str, typer.Option(help="GPU memory bandwidth, bytes per second.")] = "3.35TB",
    profile: Annotated[
        Path | None, typer.Option(help="Measured per-layer problem (pipesynth profile) replacing the analytic figures.")
    ] = None,
    time_limit: Annotated[
        float, typer.Option("--time-limit", "-t", help="Seconds of search, the evenly split baselines included.", min=1)
    ] = 20.0,
    workers: Annotated[int, typer.Option(help="CP-SAT worker threads.", min=1)] = 2,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the plan (schedule file) here.")] = None,
) -> None:
    """Plan a training job: the layer split, placement and schedule.

    The plan's whole memory (weights, gradients, optimizer states, activations) fits every GPU.

    Example: pipesynth plan --hf-config config.json --seq-len 4096 --microbatch-size 1 --microbatches 64
    --gpus 16 --gpu-memory 80GiB --tflops 989 --mfu 0.45 -o plan.json
    """
    model = read_hf_config(hf_config)
    training = Training(
        seq_len=seq_len,
        microbatch_size=microbatch_size,
        microbatches=microbatches,
        precision=precision,
        optimizer=optimizer,
        recompute=recompute,
        zero=zero,
        attention=attention,
    )
    device = Device(
        tflops=tflops,
        mfu=mfu,
        memory=_bytes(gpu_memory, "--gpu-memory"),
        reserve=_bytes(reserve, "--reserve"),
        bandwidth=_bytes(bandwidth, "--bandwidth"),
        latency=latency * 1e-6,
        hbm=_bytes(hbm, "--hbm"),
    )
    job = Job(model, training, device, gpus)
    costs = model_costs(job)
    if profile is not None:
        costs = with_profile(costs, load_problem(profile))
    result = plan_job(job, costs, time_limit=time_limit, workers=workers)
    print_table(result)
    schedule, section = plan_output(result)
    typer.echo(f"planned in {result.seconds:.1f} s")
    if section.placement != "v":
        typer.echo(f"Megatron-LM: --pipeline-model-parallel-layout {megatron_layout(section.partition)!r}")
    if output is not None:
        save_plan(schedule, section, output)
        typer.echo(f"plan written to {output}")
