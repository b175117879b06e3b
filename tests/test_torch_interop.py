"""An exported schedule run by torch.distributed.pipelining gives our executor's loss and gradients.

Two gloo ranks on CPU, float64, one launch for all cases (starting ranks is
the expensive part). For each schedule, every rank builds the same seeded model,
runs one step through torch's _PipelineScheduleRuntime loaded from our
exported CSV and one through our executor on a copy of the same stages, and
reports both losses and gradients with a single-process reference.
"""

import copy

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from pipesynth.construct import GENERATORS, generate  # noqa: E402

RANKS = 2
MICROBATCHES = 4
WIDTH = 5
# (generator, chunks): fused 1F1B, split-backward ZB-H1, V-shapes (two stages per rank, one pair adjacent;
# DualPipeV with full and deferred-W backwards), and interleaved 1F1B (looped placement).
CASES = [
    ("1f1b", 1),
    ("zb-h1", 1),
    ("v-half", 1),
    ("v-zb", 1),
    ("zb-v", 1),
    ("dualpipev", 1),
    ("interleaved-1f1b", 2),
]


def model(stages: int) -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()).double() for _ in range(stages)]


def loss_fn(output, target):
    return ((output - target) ** 2).mean()


def data():
    torch.manual_seed(1)
    return torch.randn(2 * MICROBATCHES, WIDTH, dtype=torch.float64), torch.randn(2 * MICROBATCHES, WIDTH).double()


def reference(stages: int):
    """Loss and gradients of the unpipelined model: mean of the microbatch losses."""
    modules = model(stages)
    batch, targets = data()
    losses = []
    for x, t in zip(batch.chunk(MICROBATCHES), targets.chunk(MICROBATCHES)):
        for m in modules:
            x = m(x)
        loss = loss_fn(x, t)
        (loss / MICROBATCHES).backward()
        losses.append(loss.item())
    grads = {f"{s}.{n}": p.grad for s, m in enumerate(modules) for n, p in m.named_parameters()}
    return sum(losses) / MICROBATCHES, grads


def grads_of(modules):
    return {f"{s}.{n}": p.grad.detach().clone() for s, m in modules.items() for n, p in m.named_parameters()}


def worker(rank, world, device, cases):
    """Per case: this rank's loss (None off the last stage) and gradients, from torch's runtime and from ours."""
    from pipesynth.runtime.executor import PipelineExecutor
    from pipesynth.runtime.torch_pipelining import csv_schedule, torch_step

    results = {}
    for name, chunks in cases:
        schedule = generate(name, world, MICROBATCHES, chunks=chunks)
        everything = model(schedule.problem.stages)
        mine = {s: everything[s] for s in schedule.problem.stages_on(rank)}
        ours = copy.deepcopy(mine)
        batch, targets = data()
        runtime = csv_schedule(schedule, mine, loss_fn, device)
        # torch <= 2.11 warms up the P2P of a rank's stages this way before the first step;
        # with gloo it failed on a V (a send to this rank itself) until csv_schedule's stages skipped those.
        warmup = [op for stage in runtime._stages for op in stage._get_init_p2p_neighbors_ops()]
        for work in torch.distributed.batch_isend_irecv(warmup):
            work.wait()
        torch_loss = torch_step(runtime, schedule, batch, targets)
        our_loss = PipelineExecutor(schedule, ours, loss_fn).step(batch, target=targets)
        results[name] = {
            "torch_loss": None if torch_loss is None else torch_loss.item(),
            "our_loss": None if our_loss is None else our_loss.item(),
            "torch_grads": grads_of(mine),
            "our_grads": grads_of(ours),
        }
    return results


@pytest.fixture(scope="module")
def runs():
    from pipesynth.runtime.launch import launch

    cases = [(name, chunks) for name, chunks in CASES if name in GENERATORS]
    per_rank = launch(worker, RANKS, cases)
    return {name: [r[name] for r in per_rank] for name, _ in cases}


@pytest.mark.parametrize("name,chunks", CASES)
def test_torch_runtime_on_exported_csv_matches_our_executor(runs, name, chunks):
    if name not in GENERATORS:
        pytest.skip(f"generator {name} is not registered on this branch")
    stages = generate(name, RANKS, MICROBATCHES, chunks=chunks).problem.stages
    ref_loss, ref_grads = reference(stages)
    ranks = runs[name]
    losses = [(r["torch_loss"], r["our_loss"]) for r in ranks if r["torch_loss"] is not None]
    assert len(losses) == 1  # the rank holding the last stage
    torch_loss, our_loss = losses[0]
    assert our_loss == pytest.approx(torch_loss, rel=1e-12)
    assert torch_loss == pytest.approx(ref_loss, rel=1e-12)
    seen = set()
    for r in ranks:
        for key, torch_grad in r["torch_grads"].items():
            our_grad = r["our_grads"][key]
            torch.testing.assert_close(our_grad, torch_grad, rtol=1e-10, atol=1e-13, msg=f"{name} {key}")
            torch.testing.assert_close(torch_grad, ref_grads[key], rtol=1e-10, atol=1e-13, msg=f"{name} {key}")
            seen.add(key)
    assert seen == set(ref_grads)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_torch_reads_and_lowers_every_exported_schedule(name):
    """torch's own parser, validator and send/recv lowering accept the CSV, and see our placement."""
    from torch.distributed.pipelining.schedules import _Action, _add_send_recv, _validate_schedule

    from pipesynth.formats.torch_csv import to_torch_csv

    chunks = 2 if GENERATORS[name].placement == "loop" else 1
    schedule = generate(name, 4, 8, chunks=chunks)
    rows = [[_Action.from_str(cell) for cell in line.split(",")] for line in to_torch_csv(schedule).splitlines()]
    actions = dict(enumerate(rows))
    stage_to_rank = _validate_schedule(actions, 4, schedule.problem.stages, 8)
    assert [stage_to_rank[s] for s in range(schedule.problem.stages)] == list(schedule.problem.placement)
    lowered = _add_send_recv(
        {r: list(row) for r, row in actions.items()}, lambda s: stage_to_rank[s], schedule.problem.stages
    )
    assert [[a for a in row if a.is_compute_op] for _, row in sorted(lowered.items())] == rows


def test_a_torch_without_a_schedule_class_is_named_not_crashed_into(monkeypatch):
    from pipesynth.errors import PipesynthError
    from pipesynth.runtime import torch_pipelining as tp

    assert tp.missing() is None and tp.missing("zb-v") is None
    monkeypatch.delattr(tp.torch_schedules, "ScheduleZBVZeroBubble")
    assert tp.missing("zb-v") == f"torch {torch.__version__} has no ScheduleZBVZeroBubble"
    with pytest.raises(PipesynthError, match="has no ScheduleZBVZeroBubble"):
        tp.builtin_schedule("zb-v", generate("zb-v", 2, 2), {}, None, torch.device("cpu"))
    monkeypatch.delattr(tp.torch_schedules, "_PipelineScheduleRuntime")
    assert "has no _PipelineScheduleRuntime._load_csv" in tp.missing()
