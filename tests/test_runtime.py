"""The executor: exact gradients for every schedule family, clear errors, no hangs (CPU, gloo)."""

from __future__ import annotations

import re
import time

import pytest

torch = pytest.importorskip("torch")

from runtime_workers import (  # noqa: E402
    compare_with_reference,
    faulty_run,
    leftover_run,
    memory_run,
    peer_fails_run,
    phase_run,
    random_order,
    solved,
)

from pipesynth.construct import GENERATORS, generate  # noqa: E402
from pipesynth.core.problem import make_problem  # noqa: E402
from pipesynth.formats.schedule_json import dumps  # noqa: E402
from pipesynth.runtime.launch import LaunchError, launch  # noqa: E402
from pipesynth.runtime.p2p import messages, rank_ops  # noqa: E402
from pipesynth.runtime.split import deferring, make_splittable  # noqa: E402

TOL = 1e-10  # float64


def schedules_for(devices: int, microbatches: int) -> list[str]:
    """Every registered generator, a solver output, and random valid orders that stress the P2P plan."""
    texts = [dumps(generate(name, devices, microbatches)) for name in sorted(GENERATORS)]
    texts.append(solved(devices, microbatches))
    texts.append(dumps(random_order(make_problem(devices, microbatches, "v"), seed=devices)))
    texts.append(dumps(random_order(make_problem(devices, microbatches, "loop", chunks=2, split_backward=False), 1)))
    return texts


@pytest.mark.parametrize("devices,microbatches", [(2, 4), (4, 8)])
def test_every_schedule_matches_single_process_gradients(devices, microbatches):
    texts = schedules_for(devices, microbatches)
    per_rank = launch(compare_with_reference, devices, texts, timeout=30)
    for rank, results in enumerate(per_rank):
        assert len(results) == len(texts)
        for name, loss_err, grad_err, hook_ok in results:
            assert loss_err <= TOL, f"{name}: loss differs by {loss_err} on rank {rank}"
            assert grad_err <= TOL, f"{name}: a gradient differs by {grad_err} on rank {rank}"
            assert hook_ok, f"{name}: grads_ready fired early, twice or not at all on rank {rank}"


def test_split_layers_give_the_fused_gradients_and_defer_weights():
    torch.manual_seed(0)
    nn = torch.nn
    plain = nn.Sequential(nn.Embedding(20, 8), nn.LayerNorm(8), nn.Linear(8, 20)).double()
    split = make_splittable(nn.Sequential(nn.Embedding(20, 8), nn.LayerNorm(8), nn.Linear(8, 20)).double())
    split.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 20, (3, 5))
    nn.functional.cross_entropy(plain(idx).flatten(0, 1), idx.flatten()).backward()
    queue = []
    with deferring(queue):
        nn.functional.cross_entropy(split(idx).flatten(0, 1), idx.flatten()).backward()
    embedding, norm, linear = split
    assert len(queue) == 2 and embedding.weight.grad is None and linear.weight.grad is None
    assert norm.weight.grad is not None  # LayerNorm's cheap weight gradient is computed in B
    for task in queue:
        task()
    for p, q in zip(plain.parameters(), split.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_split_layers_under_autocast_match_torchs_autocast_linear_bit_for_bit(dtype):
    """Outputs and gradients equal torch's own Linear under autocast; gradients keep the float32 dtype."""
    nn = torch.nn
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))
    split = make_splittable(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4)))
    split.load_state_dict(plain.state_dict())
    x = torch.randn(5, 8)
    queue = []
    with torch.autocast("cpu", dtype=getattr(torch, dtype)):
        want, got = plain(x), split(x)
        want.float().sum().backward()
        with deferring(queue):
            got.float().sum().backward()
    for task in queue:
        task()
    assert got.dtype == want.dtype == getattr(torch, dtype) and torch.equal(got, want)
    for p, q in zip(plain.parameters(), split.parameters()):
        assert q.grad.dtype == torch.float32 and torch.equal(p.grad, q.grad)


def test_both_sides_of_every_rank_pair_post_messages_in_the_same_order():
    schedule = random_order(make_problem(3, 4, "v"), seed=5)
    msgs = messages(schedule)
    assert len(msgs) == 2 * (schedule.problem.stages - 1) * 4 - 2 * 4  # stages 2,3 share device 2
    for a in range(3):
        for b in range(3):
            mine = [op.message.index for op in rank_ops(msgs, a) if op.peer == b]
            theirs = [op.message.index for op in rank_ops(msgs, b) if op.peer == a]
            assert mine == theirs


def test_a_hung_peer_times_out_naming_rank_action_and_peer():
    text = dumps(generate("1f1b", 3, 3))
    start = time.monotonic()
    with pytest.raises(LaunchError) as err:
        launch(faulty_run, 3, text, "stall", 3.0, timeout=10)
    assert time.monotonic() - start < 30  # the stalled rank sleeps 60 s: it was killed
    assert re.search(r"rank [02], [FB] of stage [02] microbatch 0: receiving the .* with rank 1 failed", str(err.value))


def test_the_watchdog_of_the_nccl_wait_path_ends_a_rank_stuck_on_a_hung_peer(capfd):
    # NCCL waits do not block the host, so a watchdog thread bounds them; gloo's wait() blocks,
    # which stands in for a main thread stuck inside CUDA: only the watchdog can end it.
    text = dumps(generate("1f1b", 3, 3))
    pattern = r"rank [02], [FB] of stage [02] microbatch 0: receiving the .* with rank 1 timed out after 3 s"
    with pytest.raises(LaunchError, match=r"^rank [02] failed: PipelineTimeoutError: " + pattern):
        launch(faulty_run, 3, text, "stall-watchdog", 3.0, timeout=20)
    assert re.search(pattern, capfd.readouterr().err)


def test_a_failing_rank_stops_every_rank():
    with pytest.raises(LaunchError, match="rank 1 failed: RuntimeError: boom in stage forward"):
        launch(faulty_run, 2, dumps(generate("gpipe", 2, 2)), "raise", timeout=10)


def test_the_first_real_error_is_reported_not_the_closed_connection_it_causes_on_a_lower_rank():
    with pytest.raises(LaunchError, match=r"^rank 1 failed: RuntimeError: the real cause \(at runtime_workers.py:"):
        launch(peer_fails_run, 2, timeout=10)


def test_a_nan_loss_is_an_error():
    with pytest.raises(LaunchError, match=r"rank 1 failed: NonFiniteLossError: rank 1: the loss is nan"):
        launch(faulty_run, 2, dumps(generate("zb-h1", 2, 2)), "nan", timeout=10)


def test_modules_that_do_not_match_the_schedule_fail_on_every_rank():
    messages_ = launch(faulty_run, 2, dumps(generate("1f1b", 2, 2)), "wrong-stages", timeout=10)
    for msg in messages_:
        assert "stage 0 does not sit where the schedule puts it: rank 1 was given modules for stages [0, 1]" in msg
        assert "but 1f1b places stages [1] on it (linear placement [0, 1], 2 stages)" in msg
    messages_ = launch(faulty_run, 2, dumps(generate("1f1b", 4, 4)), "world", timeout=10)
    for msg in messages_:
        assert "the schedule has 4 devices but the world has 2 ranks" in msg


def test_measured_activation_memory_follows_the_schedule():
    """Tiny GPT, 4 ranks, m = 16: prediction within 10% per rank; V-Half and V-Min far below 1F1B."""
    from pipesynth.runtime.models import GPTConfig
    from pipesynth.runtime.train import TrainConfig

    names = ["1f1b", "v-half", "v-min"]
    texts = [dumps(generate(name, 4, 16)) for name in names]
    cfg = TrainConfig(steps=1, microbatch_size=1, gpt=GPTConfig(vocab=16, seq_len=16, dim=32, heads=2))
    per_rank = launch(memory_run, 4, texts, cfg, timeout=60)
    peaks = {}
    for i, name in enumerate(names):
        for rank in range(4):
            measured, predicted = per_rank[rank][i]
            assert abs(measured - predicted) <= 0.1 * predicted, f"{name} rank {rank}: {measured} vs {predicted}"
        peaks[name] = max(per_rank[rank][i][0] for rank in range(4))
    assert peaks["v-half"] <= 0.8 * peaks["1f1b"]
    assert peaks["v-min"] <= 0.55 * peaks["1f1b"]


def test_train_command_matches_the_unpipelined_reference(tmp_path):
    """float32 tiny GPT: a pipelined run's losses equal the one-process run's within 1e-5 (relative)."""
    import json

    from typer.testing import CliRunner

    from pipesynth.cli import app
    from pipesynth.formats.schedule_json import save

    save(generate("v-half", 2, 4), tmp_path / "v-half.json")
    runner = CliRunner()
    reports = {}
    for ranks in ("2", "1"):
        out = tmp_path / f"run{ranks}.json"
        args = ["train", str(tmp_path / "v-half.json"), "--steps", "3", "--ranks", ranks, "--report", str(out)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        reports[ranks] = json.loads(out.read_text())
    pipelined, reference = reports["2"], reports["1"]
    assert len(pipelined["losses"]) == 3
    for a, b in zip(pipelined["losses"], reference["losses"]):
        assert abs(a - b) <= 1e-5 * abs(b)
    assert pipelined["losses"][-1] < pipelined["losses"][0]
    for rank in pipelined["ranks"]:
        assert rank["measured_peak_bytes"] > 0 and rank["predicted_peak_bytes"] > 0
        assert len(rank["step_seconds"]) == 3


def test_train_command_rejects_a_rank_count_that_does_not_fit(tmp_path):
    from typer.testing import CliRunner

    from pipesynth.cli import app
    from pipesynth.formats.schedule_json import save

    save(generate("1f1b", 2, 2), tmp_path / "s.json")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "s.json"), "--ranks", "3"])
    assert result.exit_code == 2
    assert "ranks: the schedule runs on 2 ranks" in result.output


def test_raw_parameters_get_their_weight_gradient_in_w_not_b():
    """Graph split: the input path runs in B only, the weight branch in W only, on every stage (stage 0 too)."""
    schedule = generate("zb-h1", 2, 3)
    per_rank = launch(phase_run, 2, dumps(schedule), timeout=20)
    for calls, grads in per_rank:
        assert all(grads.values())
        stages = {s for _, s, _ in calls}
        for s in stages:
            assert sorted(phase for name, st, phase in calls if st == s and name == "main") == ["B"] * 3
            assert sorted(phase for name, st, phase in calls if st == s and name == "weight") == ["W"] * 3


def test_graph_split_stage_frees_its_graph_after_w_when_grads_accumulate():
    """After each step nothing saved stays alive and no .grad holds a graph, whether .grad was None
    (first step) or already set (later steps, never zeroed): memory does not grow step after step."""
    per_rank = launch(leftover_run, 2, dumps(generate("zb-h1", 2, 3)), timeout=20)
    for rank, (split_stages, steps) in enumerate(per_rank):
        assert split_stages, f"rank {rank}: the stage must take the graph split"
        for step, (live_bytes, grad_history) in enumerate(steps):
            assert live_bytes == 0, f"rank {rank}, step {step}: {live_bytes} saved bytes outlive the step"
            assert not grad_history, f"rank {rank}, step {step}: a .grad carries autograd history"
