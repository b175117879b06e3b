"""A plan runs: `pipesynth plan` on the tiny Llama's config, then `pipesynth train plan.json` splits the
plan's model by the plan and trains it on local gloo ranks with the unpipelined run's losses; an uneven
split (a head-only last stage) trains too, and a model that is not the plan's is refused naming the field."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from pipesynth.cli import app  # noqa: E402
from pipesynth.errors import PipesynthError  # noqa: E402
from pipesynth.plan.job import read_hf_config  # noqa: E402
from pipesynth.plan.partition import Partition  # noqa: E402
from pipesynth.plan.plan_file import load_plan, save_plan  # noqa: E402
from pipesynth.runtime.llama import LlamaSize, llama_size, llama_stages, tiny_llama  # noqa: E402
from pipesynth.runtime.train import plan_precision, run_training, train_config, train_rank  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama-config.json"
#: fp32 and eager attention: what `train` runs on a CPU, so the plan's memory figures are the run's.
PLAN = ["--seq-len", "16", "--microbatch-size", "1", "--microbatches", "4", "--gpus", "2", "--gpu-memory", "8MiB"]
PLAN += ["--tflops", "0.01", "--precision", "fp32", "--attention", "eager", "-t", "1"]


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    run("plan", "--hf-config", CONFIG, *PLAN, "-o", path)
    return path


def test_a_plan_trains_split_by_its_partition_with_the_unpipelined_losses(plan_file, tmp_path):
    schedule, plan = load_plan(plan_file)
    out = tmp_path / "run.json"
    result = run("train", plan_file, "--model", "tiny-llama", "--steps", 2, "--report", out)
    split = ",".join(map(str, plan.partition.layers))
    assert f"plan: tiny-llama with 8 decoder layers split {split} ({plan.placement}), 1 x 16 tokens" in result.stdout
    report = json.loads(out.read_text())
    config = report["config"]
    assert config["layers_per_stage"] == list(plan.partition.layers) and config["precision"] == "fp32"
    assert config["sequence_length"] == 16 and config["microbatch_size"] == 1 and config["microbatches"] == 4
    # The plan's activation memory per GPU bounds what the executor measured on each rank, and closely:
    # the rules hold a stage's whole activation until its B ends (docs/design.md section 2), so where a
    # rank's peak falls inside a B (dualpipev's back-to-back F&B pairs) the real level is a little lower.
    for rank in report["ranks"]:
        planned = plan.memory[rank["rank"]].activation
        assert 0.97 * planned <= rank["measured_peak_bytes"] <= planned, (rank, schedule.name)
    cfg = train_config(plan, steps=2)
    reference = train_rank(0, 1, torch.device("cpu"), plan_file.read_text(), cfg)["losses"]
    assert len(report["losses"]) == 2
    assert report["losses"] == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_an_uneven_plan_with_a_head_only_last_stage_trains_too(plan_file, tmp_path):
    schedule, plan = load_plan(plan_file)
    stages = schedule.problem.stages
    counts = (plan.decoder_layers - (stages - 2), *[1] * (stages - 2), 0)  # the head alone on the last stage
    uneven = replace(plan, partition=Partition(counts))
    path = tmp_path / "uneven.json"
    save_plan(schedule, uneven, path)
    schedule, read = load_plan(path)
    assert read.partition.layers == counts
    cfg = train_config(read, steps=2)  # the Python path of a launcher
    losses = run_training(schedule, cfg)["losses"]
    reference = train_rank(0, 1, torch.device("cpu"), path.read_text(), cfg)["losses"]
    assert len(losses) == 2 and losses == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_the_example_config_is_the_tiny_llama_and_a_plan_builds_it(plan_file):
    _, plan = load_plan(plan_file)
    size = llama_size(plan)
    assert replace(size, head_dim=None, max_positions=LlamaSize.max_positions) == LlamaSize()
    built, default = tiny_llama(size, seed=3), tiny_llama(LlamaSize(), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), default.state_dict().values()))
    assert read_hf_config(CONFIG).layers == LlamaSize().layers
    stages = llama_stages(built, plan)
    assert [len(stage.layers) for stage in stages] == list(plan.partition.layers)


def test_a_model_that_is_not_the_plans_is_refused_naming_the_field(plan_file):
    _, plan = load_plan(plan_file)
    six = replace(plan, model=replace(plan.model, layers=6), partition=Partition((3, 3)))
    with pytest.raises(PipesynthError, match="plan.decoder_layers: the plan splits 6 decoder layers; the model has 8"):
        train_config(six, model="tiny-gpt").check()
    with pytest.raises(PipesynthError, match="plan.decoder_layers: the plan splits 6 decoder layers; the model has 8"):
        llama_stages(tiny_llama(LlamaSize(), seed=0), six)
    refusals = [
        (replace(plan.model, model_type="qwen2"), "plan.model_config.model_type: tiny-llama builds a llama"),
        (replace(plan.model, tied_embeddings=True), "plan.model_config.tie_word_embeddings: tied embeddings"),
        (replace(plan.model, hidden=4096, intermediate=14336, vocab=128256), "parameters; tiny-llama builds the whole"),
    ]
    for model, message in refusals:
        with pytest.raises(PipesynthError, match=message):
            llama_size(replace(plan, model=model))
    long = replace(plan, training=replace(plan.training, seq_len=2**40))
    with pytest.raises(
        PipesynthError, match="plan.training: 1 x 1099511627776 tokens per microbatch; at most 65,536 on this machine"
    ):
        train_config(long)


def test_the_plans_precision_on_cpus_is_fp32_and_on_gpus_autocast():
    assert [plan_precision(p, "cpu") for p in ("bf16-autocast", "bf16", "fp32")] == ["fp32"] * 3
    assert [plan_precision(p, "cuda") for p in ("bf16-autocast", "bf16", "fp32")] == ["bf16", "bf16", "fp32"]
