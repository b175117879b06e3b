"""Profiling stages -> problem file -> plan -> executor: bytes as the executor counts them, clear errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from pipesynth.cli import app  # noqa: E402
from pipesynth.core.units import PROFILED  # noqa: E402
from pipesynth.errors import InfeasibleError, PipesynthError  # noqa: E402
from pipesynth.formats.schedule_json import dumps, load_problem, loads, save_problem  # noqa: E402
from pipesynth.plan.budget import plan_problem  # noqa: E402
from pipesynth.runtime.executor import PipelineExecutor  # noqa: E402
from pipesynth.runtime.launch import launch  # noqa: E402
from pipesynth.runtime.models import GPTConfig, tiny_gpt  # noqa: E402
from pipesynth.runtime.p2p import TensorMeta  # noqa: E402
from pipesynth.runtime.planner import plan_pipeline  # noqa: E402
from pipesynth.runtime.profile import measure_comm, profile_stages  # noqa: E402

ROWS, WIDTH = 4, 8
F32 = 4


def stages(count: int = 2, seed: int = 0) -> list[nn.Module]:
    """Bias-free Linear stages, widths 8 -> 16 -> 8 ...: saved bytes are easy to count by hand."""
    torch.manual_seed(seed)
    widths = [WIDTH * (2 if s % 2 else 1) for s in range(count + 1)]
    return [nn.Linear(widths[s], widths[s + 1], bias=False) for s in range(count)]


def sample(count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """One microbatch for `count` stages: inputs, and targets as wide as the last stage's output."""
    gen = torch.Generator().manual_seed(1)
    return torch.randn(ROWS, WIDTH, generator=gen), torch.randn(ROWS, WIDTH * (1 + count % 2), generator=gen)


def test_profile_counts_what_b_frees_and_what_w_keeps():
    x, y = sample()
    prof = profile_stages(stages(2), x, y, nn.functional.mse_loss, repeats=2, warmup=1, comm=0)
    first, last = prof.stages
    # stage 0's input is the sample (no grad needed): its Linear saves x; B keeps x and the output gradient for W
    assert first.after_f_bytes == ROWS * WIDTH * F32
    assert first.after_b_bytes == ROWS * WIDTH * F32 + ROWS * 2 * WIDTH * F32
    assert first.activation_bytes == first.during_b_bytes >= first.after_b_bytes
    assert first.output is not None and first.output.shape == (ROWS, 2 * WIDTH)
    assert last.output is None and last.after_f_bytes > 0
    assert all(p.forward_us > 0 and p.backward_us > 0 and p.weight_us > 0 for p in prof.stages)


def test_problem_from_a_profile_is_in_us_and_bytes_and_round_trips(tmp_path):
    x, y = sample()
    prof = profile_stages(stages(2), x, y, nn.functional.mse_loss, repeats=1, warmup=0, comm=12.4)
    problem = prof.problem(2, 4, "linear")
    assert problem.units == PROFILED and problem.comm == 12
    assert problem.activation == tuple(p.activation_bytes for p in prof.stages)
    assert problem.kept_for_w == tuple(p.after_b_bytes for p in prof.stages)
    assert problem.cost_f == tuple(float(round(p.forward_us)) for p in prof.stages)
    fused = prof.problem(2, 4, "linear", split_backward=False)
    assert fused.activation == tuple(p.after_f_bytes for p in prof.stages)
    save_problem(problem, tmp_path / "p.json")
    assert load_problem(tmp_path / "p.json") == problem


def _run_plan(rank, world, device, text):
    schedule = loads(text)
    parts = stages(schedule.problem.stages)
    mine = {s: parts[s] for s in schedule.problem.stages_on(rank)}
    executor = PipelineExecutor(schedule, mine, nn.functional.mse_loss, timeout=20)
    x, y = sample(schedule.problem.stages)
    m = schedule.problem.microbatches
    for _ in range(2):
        executor.step(x.repeat(m, 1), target=y.repeat(m, 1))
    return executor.stats.peak_bytes


@pytest.mark.parametrize("split_backward", [True, False])
def test_profile_plan_run_measured_peak_is_the_walk_and_within_the_budget(split_backward):
    """The whole path: profile -> plan under a byte budget -> executor on 2 ranks measures what was predicted."""
    x, y = sample(4)
    prof = profile_stages(stages(4), x, y, nn.functional.mse_loss, repeats=1, warmup=0, comm=0)
    problem = prof.problem(2, 4, "v", split_backward=split_backward)
    budget = 0.75 * 4 * max(problem.device_activation(d) for d in range(2))
    plan = plan_problem(problem, budget, time_limit=2, deterministic=True)
    measured = launch(_run_plan, 2, dumps(plan), timeout=30)
    assert measured == prof.peak_bytes(plan)
    assert all(m <= p <= budget for m, p in zip(measured, plan.metrics.peak_memory))


def test_plan_pipeline_in_one_call():
    x, y = sample(4)
    plan = plan_pipeline(
        stages(4), x, y, nn.functional.mse_loss, devices=2, microbatches=4, repeats=1, warmup=0, comm=0, time_limit=1
    )
    assert plan.problem.placement == (0, 1, 1, 0) and plan.problem.units == PROFILED
    with pytest.raises(InfeasibleError, match="smallest feasible cap is .* bytes"):
        plan_pipeline(stages(4), x, y, nn.functional.mse_loss, devices=2, microbatches=4, memory="0.1KiB", comm=0)


class Pair(nn.Module):
    def forward(self, x):
        return x, torch.arange(3)  # a tuple with an integer tensor (forward only)


class Second(nn.Module):
    def forward(self, x, ids):
        return x * ids.float().mean()


class Odd(nn.Module):
    def forward(self, x):
        return {"x": x, "what": object()}


def test_stages_passing_tuples_are_profiled_and_other_outputs_named():
    x, y = sample(0)
    prof = profile_stages([nn.Linear(WIDTH, WIDTH), Pair(), Second()], x, y, nn.functional.mse_loss, comm=0)
    assert prof.stages[1].output.shape == (ROWS, WIDTH)  # the largest tensor crossing the boundary
    with pytest.raises(PipesynthError, match=r"stage 1 returns a object at output\['what'\]"):
        profile_stages([nn.Linear(WIDTH, WIDTH), Odd(), nn.Identity()], x, y, nn.functional.mse_loss, comm=0)


def test_a_stage_that_fails_on_its_input_is_named():
    x, y = sample(0)
    broken = [nn.Linear(WIDTH, 2 * WIDTH), nn.Linear(WIDTH, WIDTH)]  # stage 1 expects 8 features, gets 16
    with pytest.raises(PipesynthError, match="stage 1: failed on the sample microbatch"):
        profile_stages(broken, x, y, nn.functional.mse_loss, comm=0)


def test_placement_must_match_the_stage_count():
    x, y = sample(3)
    prof = profile_stages(stages(3), x, y, nn.functional.mse_loss, repeats=1, warmup=0, comm=0)
    with pytest.raises(PipesynthError, match="'v' on 2 devices needs 4 stages, but the model was profiled as 3"):
        prof.problem(2, 4, "v")


def test_profiling_leaves_gradients_as_it_found_them():
    x, y = sample()
    parts = stages(2)
    profile_stages(parts, x, y, nn.functional.mse_loss, repeats=1, warmup=0, comm=0)
    assert all(p.grad is None for m in parts for p in m.parameters())


def test_cli_profile_then_solve_in_bytes(tmp_path):
    out = tmp_path / "problem.json"
    args = ["profile", "--devices", "2", "--blocks", "4", "--dim", "16", "--seq-len", "8", "--repeats", "1"]
    result = CliRunner().invoke(app, [*args, "--warmup", "0", "--comm", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    problem = load_problem(out)
    assert problem.units == PROFILED and problem.placement == (0, 1, 1, 0) and problem.comm == 5
    smallest = max(problem.device_activation(d) for d in range(2))
    solved = CliRunner().invoke(app, ["solve", "--problem", str(out), "--memory", "1KiB", "-q", "-t", "1"])
    assert solved.exit_code == 2 and f"({smallest:.0f} bytes)" in solved.output
    schedule = tmp_path / "s.json"
    budget = f"{2 * smallest / 1024:.3f}KiB"
    args = ["solve", "--problem", str(out), "--memory", budget, "-q", "-t", "1", "-o", str(schedule)]
    solved = CliRunner().invoke(app, args)
    assert solved.exit_code == 0, solved.output
    assert max(loads(schedule.read_text()).metrics.peak_memory) <= 2 * smallest


def test_cli_profile_says_when_the_model_cannot_be_split(tmp_path):
    result = CliRunner().invoke(app, ["profile", "--devices", "4", "--blocks", "4", "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 2
    assert "4 blocks and cannot be split into 8 stages" in result.output


@pytest.mark.parametrize("cfg", [GPTConfig(), GPTConfig(vocab=50, seq_len=7, dim=12, heads=3, blocks=2)])
def test_the_tiny_gpts_parameter_count_is_the_built_models(cfg):
    assert cfg.parameters == sum(p.numel() for layer in tiny_gpt(cfg, 0) for p in layer.parameters())


def test_comm_is_measured_between_two_local_ranks():
    latency = measure_comm(TensorMeta((ROWS, WIDTH), torch.float32), iters=5, warmup=1)
    assert 0 < latency < 1e6  # microseconds: more than nothing, less than a second


def test_unknown_statistic_is_refused():
    x, y = sample()
    with pytest.raises(PipesynthError, match="statistic: expected one of median, mean"):
        profile_stages(stages(2), x, y, nn.functional.mse_loss, comm=0, statistic="mode")
