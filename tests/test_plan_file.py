"""The `plan` object: written, read back by every reader of schedule files, and refused with the field at
fault when wrong."""

import copy
import json
from dataclasses import replace

import pytest

import pipesynth
from pipesynth.construct import generate
from pipesynth.core.problem import make_problem
from pipesynth.errors import PipesynthError, ScheduleFormatError
from pipesynth.formats.schedule_json import dumps, load_with_sections
from pipesynth.plan.job import ModelShape, Training, hf_config, model_from_hf_config
from pipesynth.plan.partition import Partition
from pipesynth.plan.plan_file import (
    DeviceMemory,
    PlanSection,
    dumps_plan,
    load_plan,
    megatron_layout,
    plan_section_from_dict,
    plan_section_to_dict,
    split_by_partition,
    torchtitan_settings,
)

SHAPE = ModelShape(hidden=64, intermediate=128, layers=6, heads=4, kv_heads=2, head_dim=16, vocab=64, name="tiny")


def section(counts=(1, 2, 2, 1), placement="linear", chunks=1, devices=4) -> PlanSection:
    return PlanSection(
        model=replace(SHAPE, layers=sum(counts)),
        partition=Partition(counts),
        placement=placement,
        stages_per_device=chunks,
        training=Training(seq_len=128, microbatch_size=2, microbatches=8),
        budget_bytes=8e9,
        memory=tuple(DeviceMemory(1e9 + d, 2e9) for d in range(devices)),
        step_time_us=12345.5,
    )


def problem_of(plan: PlanSection, cap=None):
    return make_problem(plan.devices, 8, plan.placement, chunks=plan.stages_per_device, cap=cap)


def test_plan_object_round_trips_through_json():
    for plan in (section(), section((0, 3, 3, 0), "v", 2, 2), section((1, 1, 1, 1, 1, 1, 1, 0), "loop", 2, 4)):
        data = json.loads(json.dumps(plan_section_to_dict(plan)))
        assert plan_section_from_dict(data, problem_of(plan)) == plan


def test_the_model_config_reads_back_as_the_same_model():
    qwen = model_from_hf_config({**hf_config(SHAPE), "model_type": "qwen2", "attention_bias": True})
    assert qwen.qkv_bias and qwen.o_bias and qwen.model_type == "qwen2"
    for shape in (SHAPE, qwen, replace(SHAPE, tied_embeddings=True, mlp_bias=True, head_dim=8)):
        assert replace(model_from_hf_config(hf_config(shape)), name=shape.name) == shape


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


def test_split_by_partition_cuts_any_layer_list_of_the_plans_depth():
    layers = ["emb", "l0", "l1", "l2", "l3", "l4", "head"]
    assert split_by_partition(layers, section((1, 2, 2, 0))) == [["emb", "l0"], ["l1", "l2"], ["l3", "l4"], ["head"]]
    with pytest.raises(PipesynthError, match="plan.decoder_layers: the plan splits 5 decoder layers; the model has 4"):
        split_by_partition(layers[:-1], section((1, 2, 2, 0)))


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda d: d.pop("placement"), "plan.placement: missing"),
        (lambda d: d.update(surprise=1), "plan.surprise: unknown key"),
        (lambda d: d["layers_per_stage"].__setitem__(1, -1), r"plan.layers_per_stage: \[1, -1, 2, 1\] does not split"),
        (lambda d: d["layers_per_stage"].__setitem__(1, 1.5), r"plan.layers_per_stage\[1\]: expected an integer"),
        (lambda d: d.update(layers_per_stage=[1, 0, 4, 1]), "plan.layers_per_stage: stage 1 holds no layer"),
        (lambda d: d.update(layers_per_stage=[2, 2, 2]), r"plan.layers_per_stage: expected one count per stage \(4\)"),
        (lambda d: d.update(decoder_layers=9), "plan.decoder_layers: 9, but plan.model_config.num_hidden_layers is 6"),
        (lambda d: d["model_config"].update(num_hidden_layers=9), "plan.decoder_layers: 6, but plan.model_config"),
        (lambda d: d["model_config"].pop("hidden_size"), "plan.model_config: missing field 'hidden_size'"),
        (lambda d: d["model_config"].update(rope_theta=1e4), "plan.model_config.rope_theta: unknown key"),
        (lambda d: d["model_config"].update(num_key_value_heads=3), "plan.model_config: model.kv_heads: 3 does not"),
        (lambda d: d["memory"][2].update(static="1GB"), r"plan.memory\[2\].static: expected a number"),
        (lambda d: d["memory"][2].update(static=-1), r"plan.memory\[2\].static: must be non-negative, got -1"),
        (lambda d: d["memory"][0].update(total=1), r"plan.memory\[0\].total: is not static \+ activation"),
        (lambda d: d["memory"].pop(), r"plan.memory: expected one entry per device \(4\), got 3"),
        (lambda d: d["training"].update(precision="fp8"), "plan.training.precision: unknown 'fp8'"),
        (lambda d: d["training"].update(seq_len="long"), "plan.training.seq_len: expected an integer"),
        (lambda d: d["training"].pop("seq_len"), "plan.training.seq_len: missing"),
        (lambda d: d["training"].update(batch=3), "plan.training.batch: unknown key"),
        (lambda d: d["training"].update(microbatches=4), "plan.training.microbatches: 4, but problem.microbatches"),
        (lambda d: d["megatron"].update(pipeline_model_parallel_layout="E|t"), "plan.megatron: does not match"),
        (lambda d: d.update(stages_per_device=2), "plan.stages_per_device: expected 1 for a linear placement"),
        (lambda d: d.update(placement="loop", stages_per_device=2), "plan.stages_per_device: 2 on 4 devices, but"),
        (lambda d: d.update(placement="v", stages_per_device=2), "plan.stages_per_device: 2 on 4 devices, but"),
        (lambda d: d.update(costs="guess"), "plan.costs: expected one of"),
        (lambda d: d.update(budget_bytes=None), "plan.budget_bytes: expected a number, got null"),
    ],
)
def test_bad_plan_objects_name_the_field(edit, field):
    plan = section()
    data = copy.deepcopy(plan_section_to_dict(plan))
    edit(data)
    with pytest.raises(ScheduleFormatError, match=field):
        plan_section_from_dict(data, problem_of(plan))


def test_a_plan_for_another_placement_or_cap_is_refused():
    plan = section((0, 3, 3, 0), "v", 2, 2)
    with pytest.raises(ScheduleFormatError, match="plan.placement: a v placement of 4 stages on 2 devices does not"):
        plan_section_from_dict(plan_section_to_dict(plan), make_problem(2, 8, "loop", chunks=2))
    capped = problem_of(plan, cap=[8e9 - 1e9, 8e9 - 1e9 - 1])
    assert plan_section_from_dict(plan_section_to_dict(plan), capped) == plan
    wrong_cap = problem_of(plan, cap=[7e9, 5e9])
    with pytest.raises(ScheduleFormatError, match=r"plan.memory\[1\].static: budget_bytes less static is 7e\+09"):
        plan_section_from_dict(plan_section_to_dict(plan), wrong_cap)


def plan_file_text(edit=None) -> str:
    schedule = generate("1f1b", 4, 8)
    data = json.loads(dumps_plan(schedule, section()))
    if edit is not None:
        edit(data)
    return json.dumps(data)


def test_every_reader_checks_the_plan_and_load_plan_reads_it_strictly(tmp_path):
    good = tmp_path / "plan.json"
    good.write_text(plan_file_text())
    schedule, plan = load_plan(good)
    assert plan == section() and schedule == generate("1f1b", 4, 8)
    assert load_with_sections(good)[1] == {"plan": plan}
    bad = tmp_path / "bad.json"
    bad.write_text(plan_file_text(lambda d: d["plan"]["memory"][2].update(static=-5)))
    for read in (pipesynth.load, load_plan, lambda p: pipesynth.load(p, validate=False), pipesynth.load_problem):
        with pytest.raises(ScheduleFormatError, match=r"plan.memory\[2\].static"):
            read(bad)
    nan = tmp_path / "nan.json"
    nan.write_text(plan_file_text().replace('"step_time_us": 12345.5', '"step_time_us": NaN'))
    with pytest.raises(ScheduleFormatError, match="plan.step_time_us: NaN is not a JSON number"):
        load_plan(nan)
    plain = tmp_path / "plain.json"
    plain.write_text(dumps(generate("1f1b", 4, 8)))
    with pytest.raises(ScheduleFormatError, match="plan: missing"):
        load_plan(plain)
