"""`pipesynth plan`: a config.json in, a table and a plan file out; bad input in one line naming the field."""

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from pipesynth.cli import app
from pipesynth.core.problem import make_problem
from pipesynth.core.units import PROFILED
from pipesynth.core.validate import find_violations
from pipesynth.errors import PipesynthError
from pipesynth.formats.schedule_json import save_problem
from pipesynth.plan.job import model_from_hf_config
from pipesynth.plan.plan_file import load_plan, split_by_partition

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}
JOB = ["--seq-len", 512, "--microbatch-size", 1, "--microbatches", 8, "--gpus", 2, "--tflops", 1, "--mfu", 0.5]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write_config(tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_plan_prints_the_table_and_writes_a_plan_a_launcher_can_use(tmp_path):
    out = tmp_path / "plan.json"
    result = run(
        "plan", "--hf-config", write_config(tmp_path, CONFIG), *JOB, "--gpu-memory", "1GiB", "-t", 2, "-o", out
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "predicted from the analytic cost model" in result.stdout
    assert any(line.startswith("plan: ") for line in lines)
    assert sum("(even)" in line for line in lines) >= 8  # every handcrafted schedule, evenly split
    assert " ms " in result.stdout and "GiB = " in result.stdout
    schedule, plan = load_plan(out)
    assert find_violations(schedule) == []
    assert all(m.total <= plan.budget_bytes for m in plan.memory)
    assert plan.training.microbatches == 8 and plan.decoder_layers == 6
    stages = split_by_partition(["embedding", *(f"layer{i}" for i in range(6)), "head"], plan)
    assert len(stages) == schedule.problem.stages and stages[0][0] == "embedding" and stages[-1][-1] == "head"


def test_a_budget_nothing_fits_is_one_line_with_what_would_fit(tmp_path):
    result = run("plan", "--hf-config", write_config(tmp_path, CONFIG), *JOB, "--gpu-memory", "60MB", "-t", 1)
    one_line_error(result, "infeasible: no plan fits")
    assert "short by" in result.stderr and "would fit" in result.stderr


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda c: c.pop("hidden_size"), "missing field 'hidden_size'"),
        (lambda c: c.update(num_hidden_layers="32"), "field 'num_hidden_layers' must be an integer"),
        (lambda c: c.update(model_type="gpt2"), "model_type 'gpt2' is not supported; supported: llama, mistral, qwen2"),
        (lambda c: c.update(model_type="mixtral", num_local_experts=8), "model_type 'mixtral' is not supported"),
        (lambda c: c.update(num_local_experts=8), "num_local_experts=8 marks a mixture-of-experts model"),
        (lambda c: c.update(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
        (lambda c: c.update(num_key_value_heads=3), "model.kv_heads: 3 does not divide the 4 attention heads"),
        (lambda c: c.update(num_hidden_layers=10**9), "model.layers: 1000000000 decoder layers; pipesynth plans at"),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(tmp_path, edit, fragment):
    config = dict(CONFIG)
    edit(config)
    result = run("plan", "--hf-config", write_config(tmp_path, config), *JOB, "--gpu-memory", "1GiB")
    one_line_error(result, fragment)


@pytest.mark.parametrize(
    "option,value,fragment",
    [
        ("--gpu-memory", "lots", "--gpu-memory: cannot read 'lots'"),
        ("--precision", "fp8", "precision: unknown 'fp8'; expected one of bf16-autocast, bf16, fp32"),
        ("--recompute", "selective", "recompute: unknown 'selective'"),
        ("--gpus", "9", "gpus: 9 pipeline stages for 6 decoder layers, the embedding and the head: at most 8"),
    ],
)
def test_bad_options_are_refused_in_one_line(tmp_path, option, value, fragment):
    result = run("plan", "--hf-config", write_config(tmp_path, CONFIG), *JOB, "--gpu-memory", "1GiB", option, value)
    one_line_error(result, fragment)


def test_hf_config_reader_takes_optional_fields_as_transformers_does():
    model = model_from_hf_config({**CONFIG, "model_type": "qwen2", "tie_word_embeddings": True})
    assert model.qkv_bias and not model.o_bias and model.tied_embeddings
    assert model_from_hf_config({k: v for k, v in CONFIG.items() if k != "num_key_value_heads"}).kv_heads == 4
    with pytest.raises(PipesynthError, match="config.json: expected a JSON object"):
        model_from_hf_config([1, 2])


def test_a_measured_profile_replaces_the_analytic_times_and_activations(tmp_path):
    # embedding, one decoder layer, head: measured microseconds and bytes
    measured = make_problem(
        3,
        1,
        "linear",
        cost={"F": [10, 500, 900], "B": [1, 600, 800], "W": [5, 400, 700]},
        comm=20,
        activation=[1e3, 4e6, 9e6],
        kept_for_w=[1e3, 3e6, 5e6],
    )
    path = tmp_path / "profile.json"
    save_problem(replace(measured, units=PROFILED), path)
    out = tmp_path / "plan.json"
    args = [*JOB, "--gpu-memory", "1GiB", "-t", 1, "--profile", path, "-o", out]
    result = run("plan", "--hf-config", write_config(tmp_path, CONFIG), *args)
    assert result.exit_code == 0, result.output
    assert "predicted from the profile cost model" in result.stdout
    schedule, plan = load_plan(out)
    assert plan.costs == "profile" and schedule.problem.comm == 20
    layers = plan.partition.layers
    assert schedule.problem.cost_f[-1] == layers[-1] * 500 + 900  # the head's stage: its layers and the head

    wrong = tmp_path / "wrong.json"
    save_problem(replace(make_problem(2, 1, "linear"), units=PROFILED), wrong)
    result = run(
        "plan", "--hf-config", write_config(tmp_path, CONFIG), *JOB, "--gpu-memory", "1GiB", "--profile", wrong
    )
    one_line_error(result, "profile: has 2 stages; expected 3")


def test_solving_a_plan_file_again_keeps_the_plan_with_the_new_schedules_figures(tmp_path):
    planned, solved, recapped = tmp_path / "plan.json", tmp_path / "solved.json", tmp_path / "recapped.json"
    config = write_config(tmp_path, CONFIG)
    assert run("plan", "--hf-config", config, *JOB, "--gpu-memory", "1GiB", "-t", 1, "-o", planned).exit_code == 0
    result = run("solve", "--problem", planned, "-t", 1, "--quiet", "-o", solved)
    assert result.exit_code == 0, result.output
    before, plan = load_plan(planned)
    schedule, kept = load_plan(solved)
    assert schedule.provenance["method"].startswith("cp-sat") and kept.partition == plan.partition
    assert [m.static for m in kept.memory] == [m.static for m in plan.memory]
    assert [m.activation for m in kept.memory] == list(schedule.metrics.peak_memory)
    assert kept.step_time_us == pytest.approx(schedule.metrics.makespan)
    assert schedule.metrics.makespan <= before.metrics.makespan + 1e-6
    # Another cap is another plan: the plan is left out, and the note says why.
    result = run("solve", "--problem", planned, "--memory", "0.9x", "-t", 1, "--quiet", "-o", recapped)
    assert result.exit_code == 0, result.output
    assert "plan (layer split, memory per GPU) is left out" in result.stderr
    with pytest.raises(PipesynthError, match="plan: missing"):
        load_plan(recapped)
