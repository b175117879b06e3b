"""Rank functions for the tests of stage inputs and outputs, precision and the tiny Llama (importable by ranks)."""

from __future__ import annotations

import torch
from torch import nn

from pipesynth.formats.schedule_json import loads
from pipesynth.runtime.errors import PipelineError
from pipesynth.runtime.executor import PipelineExecutor

WIDTH, VOCAB = 5, 10


class Entry(nn.Module):
    """Stage 0: positional and keyword inputs in, a dict out (a float with grad, an integer tensor, a
    float without grad, a batch-cut keyword tensor and a string constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.emb = nn.Embedding(VOCAB, WIDTH)

    def forward(self, x, ids, scale=None, weights=None):
        h = torch.tanh(self.lin(x) * scale) + self.emb(ids).mean(1)
        return {"h": h, "ids": ids, "frozen": (2 * x).detach(), "tag": "entry", "weights": weights}


class Middle(nn.Module):
    """Takes the dict as keywords; adds an auxiliary loss (a scalar with grad) and a raw parameter
    (graph-split backward); returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.p = nn.Parameter(torch.full((WIDTH,), 0.3))

    def forward(self, h, ids, frozen, tag, weights):
        if tag != "entry":
            raise ValueError(f"the constant did not come through: {tag!r}")
        h = self.lin(h) + frozen * self.p + ids.float().mean(1, keepdim=True) * 0.01
        return h, ids, 0.1 * (h**2).mean(), weights


class Relay(nn.Module):
    """Takes and returns the tuple; the auxiliary loss passes through (its gradient comes back)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, h, ids, aux, weights):
        return torch.tanh(self.lin(h)), ids, aux, weights


class Exit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, h, ids, aux, weights):
        return self.lin(h), aux, weights


def weighted_loss(output, target):
    """Per-sample weighted MSE plus the auxiliary loss a middle stage added."""
    out, aux, weights = output
    return (((out - target) ** 2).mean(1) * weights).mean() + aux


def tree_model(seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [m.double() for m in (Entry(), Middle(), Relay(), Exit())]


def tree_batch(seed: int, batch: int, ids_len: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, WIDTH, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, VOCAB, (batch, ids_len), generator=gen)
    weights = torch.rand(batch, generator=gen, dtype=torch.float64) + 0.5
    scale = torch.rand(WIDTH, generator=gen, dtype=torch.float64) + 0.5  # not batch-shaped: every microbatch
    target = torch.randn(batch, WIDTH, generator=gen, dtype=torch.float64)
    return (x, ids), {"scale": scale, "weights": weights}, target


def tree_reference(modules, args, kwargs):
    entry, middle, relay, exit_ = modules
    out = entry(*args, **kwargs)
    return exit_(*relay(*middle(**out)))


def tree_runs(rank, world, device, texts):
    """tree_run for each schedule."""
    return [tree_run(rank, world, device, text) for text in texts]


def tree_run(rank, world, device, text):
    """Steps of the tree-shaped model (batches of 8, then a smaller last batch with longer ids), then
    eval_step: the worst loss and gradient differences with one process, and the eval differences."""
    schedule = loads(text)
    pipe, ref = tree_model(), tree_model()
    mine = {s: pipe[s] for s in schedule.problem.stages_on(rank)}
    executor = PipelineExecutor(schedule, mine, weighted_loss, timeout=20)
    worst_loss = worst_grad = 0.0
    for step, (batch, ids_len) in enumerate([(8, 3), (8, 3), (4, 6)]):
        args, kwargs, target = tree_batch(step, batch, ids_len)
        for m in (*pipe, *ref):
            m.zero_grad(set_to_none=True)
        ref_loss = weighted_loss(tree_reference(ref, args, kwargs), target)
        ref_loss.backward()
        loss = executor.step(*args, target=target, **kwargs)
        if loss is not None:
            worst_loss = max(worst_loss, abs(loss.item() - ref_loss.item()))
        for s in mine:
            for p, q in zip(pipe[s].parameters(), ref[s].parameters()):
                worst_grad = max(worst_grad, (p.grad - q.grad).abs().max().item())
    leftover = executor.meter.level  # saved bytes still alive after the steps (none: nothing leaked)
    args, kwargs, target = tree_batch(9, 8, 2)
    result = executor.eval_step(*args, target=target, **kwargs)
    eval_err = None
    if result is not None:
        with torch.no_grad():
            expected = tree_reference(ref, args, kwargs)
            eval_err = max(
                abs(result.loss.item() - weighted_loss(expected, target).item()),
                (result.outputs[0] - expected[0]).abs().max().item(),
                (result.outputs[2] - expected[2]).abs().max().item(),
            )
        eval_err = (eval_err, tuple(result.outputs[1].shape))  # 0-dim aux losses stacked: one per microbatch
    return worst_loss, worst_grad, eval_err, sorted(executor._graph_split), leftover


class Odd(nn.Module):
    """A stage that returns something the executor cannot send."""

    def forward(self, *args, **kwargs):
        return object()


def bad_input_run(rank, world, device, text, fault):
    """One step with bad input; this rank's PipelineError message (or None if it got none)."""
    schedule = loads(text)
    model = tree_model()
    if fault == "output":
        model[1] = Odd()
    mine = {s: model[s] for s in schedule.problem.stages_on(rank)}
    executor = PipelineExecutor(schedule, mine, weighted_loss, timeout=20)
    args, kwargs, target = tree_batch(0, 6 if fault == "batch" else 8, 3)
    target = tree_batch(0, 8, 3)[2]  # the target is right: only stage 0's inputs are at fault
    try:
        if fault == "batch":  # every input by keyword; 6 rows do not split into 4 microbatches
            executor.step(target=target, x=args[0], ids=args[1], **kwargs)
        else:
            executor.step(*args, target=target, **kwargs)
    except PipelineError as err:
        return str(err)
    return None


def llama_size():
    from pipesynth.runtime.llama import LlamaSize

    return LlamaSize(vocab=32, hidden=16, intermediate=32, layers=4, heads=2, kv_heads=1, max_positions=32)


def llama_exact_run(rank, world, device, texts, steps=2):
    """Per schedule, the tiny Llama in float64: worst loss and gradient differences with its own forward."""
    from pipesynth.runtime.llama import LlamaLM, llama_stages, tiny_llama
    from pipesynth.runtime.models import MarkovText, even_counts, lm_loss

    results = []
    size = llama_size()
    data = MarkovText(size.vocab, 0)
    for text in texts:
        schedule = loads(text)
        m = schedule.problem.microbatches
        model, ref = tiny_llama(size, 1, torch.float64), tiny_llama(size, 1, torch.float64)
        stages = llama_stages(model, even_counts(size.layers, schedule.problem.stages))
        mine = {s: stages[s] for s in schedule.problem.stages_on(rank)}
        executor = PipelineExecutor(schedule, mine, lm_loss, timeout=20)
        local = {id(p) for st in mine.values() for p in st.parameters()}
        worst_loss = worst_grad = 0.0
        for step in range(steps):
            x, y = data.batch(step, 2 * m, 8 - 2 * step)  # the second step has shorter sequences
            model.zero_grad(set_to_none=True)
            ref.zero_grad(set_to_none=True)
            ref_loss = lm_loss(LlamaLM(ref)(x), y)
            ref_loss.backward()
            loss = executor.step(x, target=y)
            if loss is not None:
                worst_loss = max(worst_loss, abs(loss.item() - ref_loss.item()))
            for p, q in zip(model.parameters(), ref.parameters()):
                if id(p) in local:
                    worst_grad = max(worst_grad, (p.grad - q.grad).abs().max().item())
        results.append((schedule.name, worst_loss, worst_grad))
    return results


def train_losses_run(rank, world, device, jobs):
    """train_rank on each (schedule text, TrainConfig); the losses (from the last stage's rank)."""
    from pipesynth.runtime.train import train_rank

    return [train_rank(rank, world, device, text, cfg).get("losses") for text, cfg in jobs]


def scaler_run(rank, world, device, text):
    """fp16 autocast with a ShardedGradScaler: a first step at a huge scale overflows and is skipped on
    every rank; after the scale is lowered, the next step updates. Per step: (parameters changed, scale)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    from pipesynth.runtime.llama import llama_stages, tiny_llama
    from pipesynth.runtime.models import MarkovText, even_counts, lm_loss

    schedule = loads(text)
    size = llama_size()
    model = tiny_llama(size, 0)
    stages = llama_stages(model, even_counts(size.layers, schedule.problem.stages))
    mine = {s: stages[s] for s in schedule.problem.stages_on(rank)}
    scaler = ShardedGradScaler("cpu", init_scale=2.0**100)
    executor = PipelineExecutor(schedule, mine, lm_loss, timeout=20, scaler=scaler)
    params = [p for st in mine.values() for p in st.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    x, y = MarkovText(size.vocab, 0).batch(0, 2 * schedule.problem.microbatches, 8)
    out = []
    for new_scale in (None, 1024.0):
        if new_scale is not None:
            scaler.update(new_scale)
        before = [p.detach().clone() for p in params]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            executor.step(x, target=y)
        grads_finite = all(torch.isfinite(p.grad).all().item() for p in params if p.grad is not None)
        scaler.step(optimizer)
        scaler.update()
        changed = any(not torch.equal(a, p) for a, p in zip(before, params))
        out.append((changed, grads_finite, scaler.get_scale()))
    return out


def placement_run(rank, world, device, text):
    """torch PipelineStage objects built loop-style for a V schedule: this rank's error message."""
    from torch.distributed.pipelining import PipelineStage

    from pipesynth.runtime.torch_pipelining import torch_schedule

    schedule = loads(text)
    count = schedule.problem.stages
    model = tree_model()
    loop = [s for s in range(count) if s % world == rank]
    stages = [PipelineStage(model[s], s, count, torch.device("cpu")) for s in loop]
    try:
        torch_schedule(schedule, stages, weighted_loss, runtime="torch")
    except PipelineError as err:
        return str(err)
    return None
