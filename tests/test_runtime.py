"""The executor: exact gradients for every schedule family, clear errors, no hangs (CPU, gloo)."""

from __future__ import annotations

import re
import time

import pytest

torch = pytest.importorskip("torch")

from runtime_workers import compare_with_reference, faulty_run, random_order  # noqa: E402

from pipesynth.generators import GENERATORS, generate  # noqa: E402
from pipesynth.problem import make_problem  # noqa: E402
from pipesynth.runtime.launch import LaunchError, launch  # noqa: E402
from pipesynth.runtime.plan import messages, rank_ops  # noqa: E402
from pipesynth.runtime.split import deferring, make_splittable  # noqa: E402
from pipesynth.schedule_file import dumps  # noqa: E402

TOL = 1e-10  # float64


def schedules_for(devices: int, microbatches: int) -> list[str]:
    """Every registered generator, plus random valid orders that stress the P2P plan."""
    texts = [dumps(generate(name, devices, microbatches)) for name in sorted(GENERATORS)]
    texts.append(dumps(random_order(make_problem(devices, microbatches, "v"), seed=devices)))
    texts.append(dumps(random_order(make_problem(devices, microbatches, "loop", chunks=2, split_backward=False), 1)))
    return texts


@pytest.mark.parametrize("devices,microbatches", [(2, 4), (4, 8)])
def test_every_schedule_matches_single_process_gradients(devices, microbatches):
    texts = schedules_for(devices, microbatches)
    per_rank = launch(compare_with_reference, devices, texts, timeout=30)
    for rank, results in enumerate(per_rank):
        assert len(results) == len(texts)
        for name, loss_err, grad_err in results:
            assert loss_err <= TOL, f"{name}: loss differs by {loss_err} on rank {rank}"
            assert grad_err <= TOL, f"{name}: a gradient differs by {grad_err} on rank {rank}"


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
    assert len(queue) == 3 and all(p.grad is None for p in split.parameters())
    for task in queue:
        task()
    for p, q in zip(plain.parameters(), split.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=1e-12)


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


def test_a_failing_rank_stops_every_rank():
    with pytest.raises(LaunchError, match="rank 1 failed: RuntimeError: boom in stage forward"):
        launch(faulty_run, 2, dumps(generate("gpipe", 2, 2)), "raise", timeout=10)


def test_a_nan_loss_is_an_error():
    with pytest.raises(LaunchError, match=r"NonFiniteLossError: rank 1: the loss is nan"):
        launch(faulty_run, 2, dumps(generate("zb-h1", 2, 2)), "nan", timeout=10)


def test_modules_that_do_not_match_the_schedule_fail_on_every_rank():
    messages_ = launch(faulty_run, 2, dumps(generate("1f1b", 2, 2)), "wrong-stages", timeout=10)
    for msg in messages_:
        assert "rank 1 was given modules for stages [0, 1], but the schedule places stages [1] on it" in msg
    messages_ = launch(faulty_run, 2, dumps(generate("1f1b", 4, 4)), "world", timeout=10)
    for msg in messages_:
        assert "the schedule has 4 devices but the world has 2 ranks" in msg
