"""A Hugging Face Llama cut into stages: exact in float64 for every schedule, bf16 autocast close to
float32, fp16 with a loss scaler, torch's runtime equal to ours, and the train command."""

from __future__ import annotations

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from payload_workers import llama_exact_run, llama_size, scaler_run, train_losses_run  # noqa: E402
from runtime_workers import solved  # noqa: E402

from pipesynth.construct import GENERATORS, generate  # noqa: E402
from pipesynth.formats.schedule_json import dumps  # noqa: E402
from pipesynth.runtime.launch import launch  # noqa: E402

TOL = 1e-10  # float64


def test_every_schedule_gives_the_models_own_loss_and_gradients_in_float64():
    texts = [dumps(generate(name, 2, 4)) for name in sorted(GENERATORS)] + [solved(2, 4)]
    per_rank = launch(llama_exact_run, 2, texts, timeout=60)
    for rank, results in enumerate(per_rank):
        assert len(results) == len(texts)
        for name, loss_err, grad_err in results:
            assert loss_err <= TOL, f"{name}: loss differs by {loss_err} on rank {rank}"
            assert grad_err <= TOL, f"{name}: a gradient differs by {grad_err} on rank {rank}"


def test_bf16_autocast_stays_close_to_float32_and_torchs_runtime_equals_ours():
    from pipesynth.runtime.train import TrainConfig, train_rank

    base = TrainConfig(steps=5, microbatch_size=1, lr=1e-2, model="tiny-llama", llama=llama_size())
    bf16 = dataclasses.replace(base, precision="bf16")
    names = ["1f1b", "zb-h1", "v-half", "zb-v"]
    texts = {name: dumps(generate(name, 2, 4)) for name in names}
    jobs = [(texts[name], bf16) for name in names]
    jobs += [(texts[name], dataclasses.replace(base, steps=3, runtime=rt)) for name in names[1:3] for rt in RUNTIMES]
    per_rank = launch(train_losses_run, 2, jobs, timeout=60)
    losses = [next(r[i] for r in per_rank if r[i] is not None) for i in range(len(jobs))]
    reference = train_rank(0, 1, torch.device("cpu"), texts["1f1b"], base)["losses"]  # one process, float32
    for name, got in zip(names, losses):
        assert len(got) == 5
        for a, b in zip(got, reference):
            assert abs(a - b) <= 0.02 * b, f"{name} bf16: {got} against float32 {reference}"
    for k, name in enumerate(names[1:3]):
        ours, theirs = losses[len(names) + 2 * k : len(names) + 2 * k + 2]
        assert ours == pytest.approx(theirs, rel=1e-5), name
        assert ours == pytest.approx(reference[:3], rel=1e-5), name


RUNTIMES = ("pipesynth", "torch")


def test_fp16_with_a_grad_scaler_skips_an_overflowing_step_on_every_rank():
    per_rank = launch(scaler_run, 2, dumps(generate("zb-h1", 2, 4)), timeout=60)
    for changed, finite, scale in (r[0] for r in per_rank):
        assert not changed and not finite and scale == 2.0**99  # skipped, scale backed off, on every rank
    for changed, finite, scale in (r[1] for r in per_rank):
        assert changed and finite and scale == 1024.0


def test_train_command_runs_the_llama_through_torchs_runtime_in_bf16(tmp_path):
    from typer.testing import CliRunner

    from pipesynth.cli import app
    from pipesynth.formats.schedule_json import save

    save(generate("v-half", 2, 4), tmp_path / "v.json")
    out = tmp_path / "run.json"
    args = ["train", str(tmp_path / "v.json"), "--model", "tiny-llama", "--precision", "bf16", "--runtime", "torch"]
    result = CliRunner().invoke(app, [*args, "--steps", "2", "--report", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["model"] == "tiny-llama" and len(report["losses"]) == 2
    assert report["config"]["precision"] == "bf16" and report["config"]["runtime"] == "torch"
    bad = CliRunner().invoke(app, ["train", str(tmp_path / "v.json"), "--precision", "fp8"])
    assert bad.exit_code == 2 and "precision: unknown 'fp8'; available: fp32, bf16, fp16" in bad.output
