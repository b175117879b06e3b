"""The delay workload sleeps F in F, B in B and W in W, for our executor's split and for torch's."""

import pytest

torch = pytest.importorskip("torch")

from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight  # noqa: E402

from pipesynth.construct import generate  # noqa: E402
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


COSTS = {"zb-h1": {"F": 1, "B": 2, "W": 3}, "1f1b": {"F": 1, "B": 5}}  # 1F1B fuses B and W


def record_naps(rank, world, device):
    """Per schedule, one step of our executor on delay stages: (pass, seconds) of every sleep, and the rank's passes."""
    from pipesynth.runtime.executor import PipelineExecutor

    current, naps, out = [None], [], {}
    delay.nap = lambda seconds: naps.append((current[0], seconds)) if seconds > 0 else None
    for name in COSTS:
        schedule = generate(name, world, 2, cost={"F": 1, "B": 2, "W": 3})
        modules = delay.delay_stages(schedule.problem, 1.0, schedule.problem.stages_on(rank))
        executor = PipelineExecutor(schedule, modules, delay.delay_loss)
        for op in ("forward", "backward", "weight"):
            run = getattr(executor, f"_{op}")

            def traced(action, run=run):
                current[0] = action.key
                run(action)

            setattr(executor, f"_{op}", traced)
        executor.step(torch.zeros(2, 4), target=torch.ones(2, 4))
        naps.clear()
        executor.step(torch.zeros(2, 4), target=torch.ones(2, 4))
        out[name] = (list(naps), [a.key for a in executor.actions])
    return out


def test_our_executor_sleeps_each_pass_its_own_cost_once():
    from pipesynth.runtime.launch import launch

    for per_schedule in launch(record_naps, 2):
        for name, (naps, passes) in per_schedule.items():
            assert sorted(naps) == sorted((key, COSTS[name][key[0]]) for key in passes), name
