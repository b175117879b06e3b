"""The `plan` object: written, read back, and refused with the field at fault when wrong."""

import copy
import json

import pytest

from pipesynth.errors import PipesynthError, ScheduleFormatError
from pipesynth.plan.job import Training
from pipesynth.plan.partition import Partition
from pipesynth.plan.plan_file import (
    DeviceMemory,
    PlanSection,
    megatron_layout,
    plan_section_from_dict,
    plan_section_to_dict,
    split_by_partition,
    torchtitan_settings,
)


def section(counts=(1, 2, 2, 1), placement="linear", chunks=1, devices=4) -> PlanSection:
    return PlanSection(
        model="tiny",
        partition=Partition(counts),
        placement=placement,
        stages_per_device=chunks,
        training=Training(seq_len=128, microbatch_size=2, microbatches=8),
        budget_bytes=8e9,
        memory=tuple(DeviceMemory(1e9 + d, 2e9) for d in range(devices)),
        step_time_us=12345.5,
    )


def test_plan_object_round_trips_through_json():
    for plan in (section(), section((0, 3, 3, 0), "v", 2, 2), section((1, 1, 1, 1, 1, 1, 1, 0), "loop", 2, 4)):
        data = json.loads(json.dumps(plan_section_to_dict(plan)))
        assert plan_section_from_dict(data) == plan


def test_launcher_settings_follow_the_partition():
    plan = section((1, 2, 2, 0))
    assert megatron_layout(plan.partition) == "Et|t*2|t*2|L"
    assert plan_section_to_dict(plan)["megatron"] == {
        "pipeline_model_parallel_size": 4,
        "pipeline_model_parallel_layout": "Et|t*2|t*2|L",
    }
    titan = torchtitan_settings(plan)
    assert titan["module_fqns_per_model_part"] == [
        ["tok_embeddings", "layers.0"],
        ["layers.1", "layers.2"],
        ["layers.3", "layers.4"],
        ["norm", "output"],
    ]
    assert titan["pipeline_parallel_schedule"] == "PipelineScheduleSingle"
    assert plan_section_to_dict(section((0, 3, 3, 0), "v", 2, 2))["megatron"] is None


def test_split_by_partition_cuts_any_layer_list():
    layers = ["emb", "l0", "l1", "l2", "l3", "l4", "head"]
    assert split_by_partition(layers, section((1, 2, 2, 0))) == [["emb", "l0"], ["l1", "l2"], ["l3", "l4"], ["head"]]
    with pytest.raises(PipesynthError, match="splits 7 layers"):
        split_by_partition(layers[:-1], section((1, 2, 2, 0)))


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda d: d.pop("placement"), "plan.placement: missing"),
        (lambda d: d.update(surprise=1), "plan.surprise: unknown key"),
        (lambda d: d["layers_per_stage"].__setitem__(1, -1), r"plan.layers_per_stage\[1\]"),
        (lambda d: d.update(layers_per_stage=[1, 0, 4, 1]), "plan.layers_per_stage: stage 1 holds no layer"),
        (lambda d: d.update(decoder_layers=9), "plan.layers_per_stage: .*does not split the model's 9"),
        (lambda d: d["memory"][2].update(static="1GB"), r"plan.memory\[2\].static: expected a number"),
        (lambda d: d["memory"][0].update(total=1), r"plan.memory\[0\].total: is not static \+ activation"),
        (lambda d: d["training"].update(precision="fp8"), "plan.training: precision: unknown 'fp8'"),
        (lambda d: d["training"].update(batch=3), "plan.training.batch: unknown key"),
        (lambda d: d["megatron"].update(pipeline_model_parallel_layout="E|t"), "plan.megatron: does not match"),
        (lambda d: d.update(stages_per_device=2), "plan.stages_per_device: expected 1 for a linear placement"),
        (lambda d: d.update(placement="loop", stages_per_device=2), "plan.layers_per_stage: 4 stages, but a loop"),
        (lambda d: d.update(costs="guess"), "plan.costs: expected one of"),
    ],
)
def test_bad_plan_objects_name_the_field(edit, field):
    data = copy.deepcopy(plan_section_to_dict(section()))
    edit(data)
    with pytest.raises(ScheduleFormatError, match=field):
        plan_section_from_dict(data)
