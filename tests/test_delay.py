"""The delay workload sleeps F in F, B in B and W in W, for our executor's split and for torch's."""

import pytest

torch = pytest.importorskip("torch")

from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight  # noqa: E402

from pipesynth.generators import generate  # noqa: E402
from pipesynth.runtime import delay  # noqa: E402
from pipesynth.runtime.split import deferring  # noqa: E402


@pytest.fixture
def naps(monkeypatch):
    """Record the seconds of every sleep instead of sleeping."""
    calls = []
    monkeypatch.setattr(delay, "nap", lambda seconds: calls.append(seconds) if seconds > 0 else None)
    return calls


def stage_and_input():
    stage = delay.DelayStage(f=1.0, b=2.0, w=3.0)
    return stage, torch.arange(8.0).reshape(2, 4).requires_grad_(True)


def test_our_split_defers_the_weight_sleep_to_W(naps):
    stage, x = stage_and_input()
    out = stage(x)
    assert naps == [1.0]
    queue = []
    with deferring(queue):
        out.backward(torch.ones_like(out))
    assert naps == [1.0, 2.0] and stage.weight.grad is None and len(queue) == 1
    queue.pop()()
    assert naps == [1.0, 2.0, 3.0]
    assert torch.equal(stage.weight.grad, torch.full((4,), 2.0)) and torch.equal(x.grad, torch.ones(2, 4))


def test_torch_split_sleeps_B_in_input_grad_and_W_in_weight_grad(naps):
    stage, x = stage_and_input()
    out = stage(x)
    _, groups = stage_backward_input([out], [torch.ones_like(out)], [x], stage.parameters())
    assert naps == [1.0, 2.0]
    stage_backward_weight(stage.parameters(), groups)
    assert naps == [1.0, 2.0, 3.0]
    assert torch.equal(stage.weight.grad, torch.full((4,), 2.0))


def test_fused_backward_sleeps_both(naps):
    stage, x = stage_and_input()
    stage(x).sum().backward()
    assert sorted(naps) == [1.0, 2.0, 3.0]


def test_delay_stages_take_the_problem_costs():
    split = generate("zb-h1", 2, 2, cost={"F": 1, "B": 2, "W": 3}).problem
    fused = generate("1f1b", 2, 2, cost={"F": 1, "B": 2, "W": 3}).problem
    s = delay.delay_stages(split, 0.01, [1])[1]
    assert (s.f, s.b, s.w) == pytest.approx((0.01, 0.02, 0.03))
    s = delay.delay_stages(fused, 0.01)[0]
    assert (s.f, s.b, s.w) == pytest.approx((0.01, 0.05, 0.0))
