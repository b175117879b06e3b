"""The `plan` object of a schedule file: the layer split, how to launch it, and the memory it was planned for.

`pipesynth plan` writes a `pipesynth.schedule/1` file with a top-level
`plan` object (docs/design.md section 5.2). Its core is the decoder layers
per stage and the placement; the item ranges, Megatron's
`--pipeline-model-parallel-layout` and torchtitan's settings are derived
from them, written for people and launchers, and checked on reading, so a
hand-edited file cannot say two different things. `split_by_partition`
cuts any list of layers (torch modules or anything else) by the plan, so
the file alone is enough for a launcher.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, TypeVar

from pipesynth.core.problem import Problem, check_value, placement_for
from pipesynth.core.schedule import Schedule
from pipesynth.errors import PipesynthError, ScheduleFormatError
from pipesynth.formats.files import write_text_atomic
from pipesynth.formats.json_text import join
from pipesynth.formats.schedule_json import (
    NUMBER,
    dumps,
    expect_integers,
    expect_object,
    get_field,
    load_with_sections,
    plain_number,
    register_section,
)
from pipesynth.plan.job import HF_CONFIG_FIELDS, ModelShape, Training, hf_config, model_from_hf_config
from pipesynth.plan.partition import Partition, check_partition

T = TypeVar("T")
PLACEMENT_KINDS = ("linear", "loop", "v")
COST_SOURCES = ("analytic", "profile")
KEYS = (
    "model",
    "model_config",
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

    model: ModelShape
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
        return self.model.layers

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
    return plain_number(round(x, 3))


def plan_section_to_dict(plan: PlanSection) -> dict[str, Any]:
    """The `plan` object as written (docs/design.md section 5.2)."""
    return {
        "model": plan.model.name,
        "model_config": hf_config(plan.model),
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


def plan_section_from_dict(data: Any, problem: Problem, path: str = "plan") -> PlanSection:
    """Read and check a `plan` object against its schedule's problem; every error names the field
    (`plan.memory[2].static`). Counts are matched with the problem's before any list is built from
    them, so a hostile plan costs no more than its problem."""
    data = expect_object(data, path, KEYS)

    def field(key: str, kinds: type | tuple[type, ...]) -> Any:
        return get_field(data, key, path, kinds)

    placement = field("placement", str)
    if placement not in PLACEMENT_KINDS:
        raise ScheduleFormatError(f"{path}.placement: expected one of {', '.join(PLACEMENT_KINDS)}, got {placement!r}")
    chunks = field("stages_per_device", int)
    fixed = {"linear": 1, "v": 2}.get(placement)
    if (fixed is not None and chunks != fixed) or chunks < 1:
        expected = f"{fixed} for a {placement} placement" if fixed else "at least 1"
        raise ScheduleFormatError(f"{path}.stages_per_device: expected {expected}, got {chunks}")
    raw_memory = field("memory", list)
    if len(raw_memory) != problem.devices:
        raise ScheduleFormatError(
            f"{path}.memory: expected one entry per device ({problem.devices}), got {len(raw_memory)}"
        )
    if chunks * problem.devices != problem.stages:
        raise ScheduleFormatError(
            f"{path}.stages_per_device: {chunks} on {problem.devices} devices, "
            f"but the problem has {problem.stages} stages"
        )
    counts = field("layers_per_stage", list)
    expect_integers(counts, join(path, "layers_per_stage"), "layer count")
    if len(counts) != problem.stages:
        raise ScheduleFormatError(
            f"{path}.layers_per_stage: expected one count per stage ({problem.stages}), got {len(counts)}"
        )
    model = _model(data, path)
    layers = field("decoder_layers", int)
    if layers != model.layers:
        raise ScheduleFormatError(
            f"{path}.decoder_layers: {layers}, but {path}.model_config.num_hidden_layers is {model.layers}"
        )
    partition = Partition(tuple(counts))
    try:
        check_partition(partition, layers)
    except PipesynthError as err:
        raise ScheduleFormatError(f"{path}.layers_per_stage: {str(err).removeprefix('partition: ')}") from None
    costs = field("costs", str)
    if costs not in COST_SOURCES:
        raise ScheduleFormatError(f"{path}.costs: expected one of {', '.join(COST_SOURCES)}, got {costs!r}")
    plan = PlanSection(
        model=model,
        partition=partition,
        placement=placement,
        stages_per_device=chunks,
        training=_training(field("training", dict), join(path, "training")),
        budget_bytes=_bytes(data, "budget_bytes", path),
        memory=tuple(_device_memory(raw, f"{path}.memory[{d}]") for d, raw in enumerate(raw_memory)),
        step_time_us=_bytes(data, "step_time_us", path),
        costs=costs,
    )
    check_plan_matches(plan, problem, path)
    derived = plan_section_to_dict(plan)
    for key in ("item_ranges", "megatron", "torchtitan"):
        if key in data and data[key] != derived[key]:
            raise ScheduleFormatError(f"{path}.{key}: does not match {path}.layers_per_stage and {path}.placement")
    return plan


def _model(data: dict[str, Any], path: str) -> ModelShape:
    """The model's shape: `model_config` (config.json's fields) named `model`."""
    where = join(path, "model_config")
    raw = expect_object(get_field(data, "model_config", path, dict), where, HF_CONFIG_FIELDS)
    for key, value in raw.items():  # config.json files may say null for "the default"; a plan file says it
        if value is None:
            raise ScheduleFormatError(f"{where}.{key}: expected a value, got null")
    try:
        shape = model_from_hf_config(raw, where=where)
    except PipesynthError as err:
        raise ScheduleFormatError(str(err)) from None
    return replace(shape, name=get_field(data, "model", path, str))


def _training(raw: dict[str, Any], path: str) -> Training:
    """The `training` object: Training's fields, each of its type; Training checks their values."""
    expect_object(raw, path, tuple(f.name for f in fields(Training)))
    kinds = {"int": int, "str": str}
    values = {
        f.name: get_field(raw, f.name, path, kinds[f.type], required=f.default is MISSING)
        for f in fields(Training)
        if f.name in raw or f.default is MISSING
    }
    try:
        return Training(**values)
    except PipesynthError as err:
        raise ScheduleFormatError(f"{path}.{err}") from None


def _bytes(obj: dict[str, Any], key: str, path: str) -> float:
    """A byte count or a time: a number from 0 to MAX_VALUE, as the problem's values."""
    value = float(get_field(obj, key, path, NUMBER))
    try:
        check_value(value, join(path, key))
    except PipesynthError as err:
        raise ScheduleFormatError(str(err)) from None
    return value


def _device_memory(raw: Any, path: str) -> DeviceMemory:
    raw = expect_object(raw, path, ("static", "activation", "total"))
    entry = DeviceMemory(_bytes(raw, "static", path), _bytes(raw, "activation", path))
    if "total" in raw and abs(_bytes(raw, "total", path) - entry.total) > 1:
        raise ScheduleFormatError(f"{path}.total: is not static + activation")
    return entry


def check_plan_matches(plan: PlanSection, problem: Problem, path: str = "plan") -> None:
    """The plan describes this problem: same placement and microbatches, and each device's cap is the
    budget less its static bytes (docs/design.md section 5.2)."""
    try:
        stage_devices = plan.stage_devices()
    except PipesynthError as err:
        raise ScheduleFormatError(f"{path}.stages_per_device: {err}") from None
    if stage_devices != problem.placement:
        raise ScheduleFormatError(
            f"{path}.placement: a {plan.placement} placement of {len(stage_devices)} stages on {plan.devices} "
            "devices does not match problem.placement"
        )
    if plan.training.microbatches != problem.microbatches:
        raise ScheduleFormatError(
            f"{path}.training.microbatches: {plan.training.microbatches}, but problem.microbatches is "
            f"{problem.microbatches}"
        )
    for d, (memory, cap) in enumerate(zip(plan.memory, problem.cap or ())):
        if abs(plan.budget_bytes - memory.static - cap) > 1:
            raise ScheduleFormatError(
                f"{path}.memory[{d}].static: budget_bytes less static is {plan.budget_bytes - memory.static:g}, "
                f"but problem.memory.cap[{d}] is {cap:g}"
            )


def dumps_plan(schedule: Schedule, plan: PlanSection) -> str:
    """The schedule file with its `plan` object last."""
    check_plan_matches(plan, schedule.problem)
    return dumps(schedule, {"plan": plan_section_to_dict(plan)})


def save_plan(schedule: Schedule, plan: PlanSection, path: str | os.PathLike[str]) -> None:
    write_text_atomic(path, dumps_plan(schedule, plan))


def load_plan(path: str | os.PathLike[str]) -> tuple[Schedule, PlanSection]:
    """A plan file, read like every schedule file (strict, validated): the schedule and its `plan` object."""
    schedule, sections = load_with_sections(path)
    if "plan" not in sections:
        raise ScheduleFormatError(f"{path}: plan: missing (write one with `pipesynth plan`)")
    return schedule, sections["plan"]


def layers_per_stage(plan: PlanSection | Partition, decoder_layers: int) -> tuple[int, ...]:
    """The plan's decoder layers per stage for a model of `decoder_layers`, which must be the plan's."""
    partition = plan.partition if isinstance(plan, PlanSection) else plan
    planned = sum(partition.layers)
    if planned != decoder_layers:
        raise PipesynthError(
            f"plan.decoder_layers: the plan splits {planned} decoder layers; the model has {decoder_layers}"
        )
    return partition.layers


def split_by_partition(layers: Sequence[T], plan: PlanSection | Partition) -> list[list[T]]:
    """Cut [embedding, decoder layers..., head] into the plan's stages (wrap each in nn.Sequential to run it)."""
    partition = Partition(layers_per_stage(plan, len(layers) - 2))
    return [list(layers[start:end]) for start, end in partition.item_ranges()]


register_section("plan", plan_section_from_dict)
