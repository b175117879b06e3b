"""The `plan` object of a schedule file: the layer split, how to launch it, and the memory it was planned for.

`pipesynth plan` writes a `pipesynth.schedule/1` file with a top-level
`plan` object (docs/design.md section 5.1). Its core is the decoder layers
per stage and the placement; the item ranges, Megatron's
`--pipeline-model-parallel-layout` and torchtitan's settings are derived
from them, written for people and launchers, and checked on reading, so a
hand-edited file cannot say two different things. `split_by_partition`
cuts any list of layers (torch modules or anything else) by the plan, so
the file alone is enough for a launcher.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from pipesynth.core.problem import placement_for
from pipesynth.core.schedule import Schedule
from pipesynth.errors import PipesynthError, ScheduleFormatError
from pipesynth.formats.files import read_text, write_text_atomic
from pipesynth.formats.schedule_json import dumps, schedule_from_dict
from pipesynth.plan.job import Training
from pipesynth.plan.partition import Partition, check_partition

T = TypeVar("T")
PLACEMENT_KINDS = ("linear", "loop", "v")
COST_SOURCES = ("analytic", "profile")
NUMBER = (int, float)
KEYS = (
    "model",
    "decoder_layers",
    "placement",
    "stages_per_device",
    "layers_per_stage",
    "item_ranges",
    "training",
    "budget_bytes",
    "memory",
    "step_time_us",
    "costs",
    "megatron",
    "torchtitan",
)


@dataclass(frozen=True)
class DeviceMemory:
    """Planned bytes on one GPU: static (weights, gradients, optimizer states) and the activation peak."""

    static: float
    activation: float

    @property
    def total(self) -> float:
        return self.static + self.activation


@dataclass(frozen=True)
class PlanSection:
    """What a launcher needs besides the schedule: which layers each stage runs, and the memory plan."""

    model: str
    partition: Partition
    placement: str
    stages_per_device: int
    training: Training
    budget_bytes: float
    memory: tuple[DeviceMemory, ...]
    step_time_us: float
    costs: str = "analytic"

    @property
    def decoder_layers(self) -> int:
        return sum(self.partition.layers)

    @property
    def devices(self) -> int:
        return len(self.memory)

    def stage_devices(self) -> tuple[int, ...]:
        return placement_for(self.placement, self.devices, self.stages_per_device)


def item_names(decoder_layers: int) -> list[str]:
    """torchtitan's module names of [embedding, decoder x L, head]."""
    return ["tok_embeddings", *(f"layers.{i}" for i in range(decoder_layers)), "norm+output"]


def megatron_layout(partition: Partition) -> str:
    """Megatron-LM's `--pipeline-model-parallel-layout`: `E` embedding, `t` decoder layer, `L` loss,
    `|` between stages (`t*3`: three decoder layers)."""
    parts = []
    for s, count in enumerate(partition.layers):
        text = "E" if s == 0 else ""
        text += "" if count == 0 else ("t" if count == 1 else f"t*{count}")
        text += "L" if s == partition.stages - 1 else ""
        parts.append(text)
    return "|".join(parts)


def megatron_settings(plan: PlanSection) -> dict[str, Any] | None:
    """Megatron places virtual stages round-robin (a loop); a V placement has no Megatron equivalent."""
    if plan.placement == "v":
        return None
    out: dict[str, Any] = {
        "pipeline_model_parallel_size": plan.devices,
        "pipeline_model_parallel_layout": megatron_layout(plan.partition),
    }
    if plan.stages_per_device > 1:
        out["num_virtual_stages_per_pipeline_rank"] = plan.stages_per_device
    return out


def torchtitan_settings(plan: PlanSection) -> dict[str, Any]:
    """torchtitan's [parallelism] settings for this split.

    torchtitan loads a CSV schedule (`pipesynth export plan.json --to
    torch-csv`) only with a loop placement (PipelineScheduleSingle/Multi);
    for a V placement it derives the V from ZBVZeroBubble and runs its own
    order on our split.
    """
    names = item_names(plan.decoder_layers)
    fqns = []
    for start, end in plan.partition.item_ranges():
        stage = []
        for name in names[start:end]:
            stage += ["norm", "output"] if name == "norm+output" else [name]
        fqns.append(stage)
    if plan.placement == "v":
        schedule, csv = "ZBVZeroBubble", None
    else:
        schedule = "PipelineScheduleMulti" if plan.stages_per_device > 1 else "PipelineScheduleSingle"
        csv = "plan.csv"
    return {
        "pipeline_parallel_degree": plan.devices,
        "pipeline_parallel_schedule": schedule,
        "pipeline_parallel_schedule_csv": csv,
        "pipeline_parallel_microbatch_size": plan.training.microbatch_size,
        "module_fqns_per_model_part": fqns,
    }


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 3)


def plan_section_to_dict(plan: PlanSection) -> dict[str, Any]:
    """The `plan` object as written (docs/design.md section 5.1)."""
    return {
        "model": plan.model,
        "decoder_layers": plan.decoder_layers,
        "placement": plan.placement,
        "stages_per_device": plan.stages_per_device,
        "layers_per_stage": list(plan.partition.layers),
        "item_ranges": [list(r) for r in plan.partition.item_ranges()],
        "training": {f.name: getattr(plan.training, f.name) for f in fields(Training)},
        "budget_bytes": _num(plan.budget_bytes),
        "memory": [
            {"static": _num(m.static), "activation": _num(m.activation), "total": _num(m.total)} for m in plan.memory
        ],
        "step_time_us": _num(plan.step_time_us),
        "costs": plan.costs,
        "megatron": megatron_settings(plan),
        "torchtitan": torchtitan_settings(plan),
    }


def _get(obj: dict[str, Any], key: str, path: str, kinds: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise ScheduleFormatError(f"{path}{key}: missing")
    value = obj[key]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
        expected = "a number" if kinds == NUMBER else " or ".join(names.get(k, k.__name__) for k in kinds)
        raise ScheduleFormatError(f"{path}{key}: expected {expected}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ScheduleFormatError(f"{path}{key}: expected a finite number, got {value!r}")
    return value


def _only(obj: dict[str, Any], known: Sequence[str], path: str) -> None:
    for key in obj:
        if key not in known:
            raise ScheduleFormatError(f"{path}{key}: unknown key; expected {', '.join(known)}")


def plan_section_from_dict(data: Any, path: str = "plan.") -> PlanSection:
    """Read and check a `plan` object; every error names the field (`plan.memory[2].static`)."""
    if not isinstance(data, dict):
        raise ScheduleFormatError(f"{path.rstrip('.')}: expected an object")
    _only(data, KEYS, path)
    placement = _get(data, "placement", path, str)
    if placement not in PLACEMENT_KINDS:
        raise ScheduleFormatError(f"{path}placement: expected one of {', '.join(PLACEMENT_KINDS)}, got {placement!r}")
    chunks = _get(data, "stages_per_device", path, int)
    fixed = {"linear": 1, "v": 2}.get(placement)
    if (fixed is not None and chunks != fixed) or chunks < 1:
        expected = f"{fixed} for a {placement} placement" if fixed else "at least 1"
        raise ScheduleFormatError(f"{path}stages_per_device: expected {expected}, got {chunks}")
    counts = _get(data, "layers_per_stage", path, list)
    for s, c in enumerate(counts):
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ScheduleFormatError(f"{path}layers_per_stage[{s}]: expected a non-negative integer, got {c!r}")
    layers = _get(data, "decoder_layers", path, int)
    partition = Partition(tuple(counts))
    try:
        check_partition(partition, layers)
    except PipesynthError as err:
        raise ScheduleFormatError(f"{path}layers_per_stage: {str(err).removeprefix('partition: ')}") from None
    raw_training = _get(data, "training", path, dict)
    _only(raw_training, [f.name for f in fields(Training)], f"{path}training.")
    try:
        training = Training(**raw_training)
    except (PipesynthError, TypeError) as err:
        raise ScheduleFormatError(f"{path}training: {err}") from None
    raw_memory = _get(data, "memory", path, list)
    memory = []
    for d, raw in enumerate(raw_memory):
        where = f"{path}memory[{d}]."
        if not isinstance(raw, dict):
            raise ScheduleFormatError(f"{where.rstrip('.')}: expected an object")
        _only(raw, ("static", "activation", "total"), where)
        entry = DeviceMemory(float(_get(raw, "static", where, NUMBER)), float(_get(raw, "activation", where, NUMBER)))
        if min(entry.static, entry.activation) < 0:
            raise ScheduleFormatError(f"{where.rstrip('.')}: bytes must be non-negative")
        if "total" in raw and abs(_get(raw, "total", where, NUMBER) - entry.total) > 1:
            raise ScheduleFormatError(f"{where}total: is not static + activation")
        memory.append(entry)
    if not memory:
        raise ScheduleFormatError(f"{path}memory: expected one entry per device")
    costs = _get(data, "costs", path, str)
    if costs not in COST_SOURCES:
        raise ScheduleFormatError(f"{path}costs: expected one of {', '.join(COST_SOURCES)}, got {costs!r}")
    plan = PlanSection(
        model=_get(data, "model", path, str),
        partition=partition,
        placement=placement,
        stages_per_device=chunks,
        training=training,
        budget_bytes=float(_get(data, "budget_bytes", path, NUMBER)),
        memory=tuple(memory),
        step_time_us=float(_get(data, "step_time_us", path, NUMBER)),
        costs=costs,
    )
    try:
        stage_devices = plan.stage_devices()
    except PipesynthError as err:
        raise ScheduleFormatError(f"{path}stages_per_device: {err}") from None
    if len(stage_devices) != partition.stages:
        raise ScheduleFormatError(
            f"{path}layers_per_stage: {partition.stages} stages, but a {placement} placement on "
            f"{plan.devices} devices has {len(stage_devices)}"
        )
    derived = plan_section_to_dict(plan)
    for key in ("item_ranges", "megatron", "torchtitan"):
        if key in data and data[key] != derived[key]:
            raise ScheduleFormatError(f"{path}{key}: does not match {path}layers_per_stage and {path}placement")
    return plan


def check_plan_matches(plan: PlanSection, schedule: Schedule) -> None:
    """The plan describes this schedule: same stages, devices, placement and microbatches."""
    problem = schedule.problem
    if plan.stage_devices() != problem.placement:
        raise ScheduleFormatError("plan.placement: does not match problem.placement")
    if plan.training.microbatches != problem.microbatches:
        raise ScheduleFormatError("plan.training.microbatches: does not match problem.microbatches")


def dumps_plan(schedule: Schedule, plan: PlanSection) -> str:
    """The schedule file with its `plan` object last."""
    check_plan_matches(plan, schedule)
    text = dumps(schedule).rstrip()
    if not text.endswith("}"):
        raise PipesynthError("internal: a schedule file must be one JSON object")
    section = json.dumps(plan_section_to_dict(plan), indent=1).replace("\n", "\n ")
    return f'{text[:-1].rstrip()},\n "plan": {section}\n}}\n'


def save_plan(schedule: Schedule, plan: PlanSection, path: str | os.PathLike[str]) -> None:
    write_text_atomic(path, dumps_plan(schedule, plan))


def load_plan(path: str | os.PathLike[str]) -> tuple[Schedule, PlanSection]:
    """A plan file: the schedule and its checked `plan` object."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ScheduleFormatError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or "plan" not in data:
        raise ScheduleFormatError(f"{path}: plan: missing (write one with `pipesynth plan`)")
    schedule = schedule_from_dict(data)
    plan = plan_section_from_dict(data["plan"])
    check_plan_matches(plan, schedule)
    return schedule, plan


def split_by_partition(layers: Sequence[T], plan: PlanSection | Partition) -> list[list[T]]:
    """Cut [embedding, decoder layers..., head] into the plan's stages (wrap each in nn.Sequential to run it)."""
    partition = plan.partition if isinstance(plan, PlanSection) else plan
    items = sum(partition.layers) + 2
    if len(layers) != items:
        raise PipesynthError(
            f"layers: the plan splits {items} layers (embedding, {items - 2} decoder layers, head), got {len(layers)}"
        )
    return [list(layers[start:end]) for start, end in partition.item_ranges()]
