"""Rank functions for the runtime tests (importable by spawned processes)."""

from __future__ import annotations

import torch
from torch import nn

from pipesynth.runtime.executor import PipelineExecutor
from pipesynth.runtime.models import split_layers
from pipesynth.schedule_file import loads


def mlp(layers: int, width: int, seed: int) -> list[nn.Module]:
    torch.manual_seed(seed)
    out: list[nn.Module] = []
    for i in range(layers):
        block = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.Tanh())
        out.append(block if i % 2 else nn.Linear(width, width))
    return [m.double() for m in out]


def compare_with_reference(rank, world, device, schedule_texts, steps=3, width=6):
    """Train each schedule and the single-process model side by side; return the worst differences."""
    results = []
    for text in schedule_texts:
        schedule = loads(text)
        stages = schedule.problem.stages
        m = schedule.problem.microbatches
        ref_layers = mlp(stages, width, seed=1)
        ref = nn.Sequential(*ref_layers)
        pipe_layers = mlp(stages, width, seed=1)
        parts = split_layers(pipe_layers, [1] * stages)
        mine = {s: parts[s] for s in schedule.problem.stages_on(rank)}
        executor = PipelineExecutor(schedule, mine, nn.functional.mse_loss, timeout=20)
        opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
        opt = torch.optim.SGD([p for mod in mine.values() for p in mod.parameters()], lr=0.1)
        worst_loss = worst_grad = 0.0
        gen = torch.Generator().manual_seed(7)
        for _ in range(steps):
            x = torch.randn(2 * m, width, generator=gen, dtype=torch.float64)
            y = torch.randn(2 * m, width, generator=gen, dtype=torch.float64)
            opt_ref.zero_grad()
            ref_loss = nn.functional.mse_loss(ref(x), y)
            ref_loss.backward()
            opt.zero_grad()
            loss = executor.step(x, y)
            if loss is not None:
                worst_loss = max(worst_loss, abs(loss.item() - ref_loss.item()))
            for s, mod in mine.items():
                for p, q in zip(mod.parameters(), ref_layers[s].parameters()):
                    worst_grad = max(worst_grad, (p.grad - q.grad).abs().max().item())
            opt_ref.step()
            opt.step()
        results.append((schedule.name, worst_loss, worst_grad))
    return results


def random_order(problem, seed: int):
    """A random valid order: repeatedly run a random pass whose dependencies have run."""
    import random

    from pipesynth.schedule import from_order
    from pipesynth.simulate import dependencies

    rng = random.Random(seed)
    todo = {(op, s, j) for op in problem.ops for s in range(problem.stages) for j in range(problem.microbatches)}
    done: set = set()
    order = [[] for _ in range(problem.devices)]
    while todo:
        ready = sorted(k for k in todo if all(d in done for d in dependencies(problem, *k)))
        key = rng.choice(ready)
        todo.remove(key)
        done.add(key)
        order[problem.placement[key[1]]].append(key)
    return from_order(problem, order, f"random-{seed}")


class Stall(nn.Module):
    """A stage that sleeps far past any timeout (a hung peer)."""

    def forward(self, x):
        import time

        if x.device.type != "meta":  # let the shape handshake through
            time.sleep(60)
        return x


class Boom(nn.Module):
    def forward(self, x):
        if x.device.type != "meta":
            raise RuntimeError("boom in stage forward")
        return x


def faulty_run(rank, world, device, schedule_text, fault, timeout=5.0):
    """Run one step with a fault injected; return this rank's error message (or None)."""
    from pipesynth.runtime.executor import PipelineError

    schedule = loads(schedule_text)
    stages = schedule.problem.stages
    parts = split_layers(mlp(stages, 4, seed=1), [1] * stages)
    mine = {s: parts[s] for s in schedule.problem.stages_on(rank)}
    if fault == "stall" and rank == 1:
        mine = {s: Stall() for s in mine}
    if fault == "raise" and rank == 1:
        mine = {s: Boom() for s in mine}
    if fault == "wrong-stages" and rank == 1:
        mine[0] = parts[0]
    m = schedule.problem.microbatches
    x = torch.randn(m, 4, dtype=torch.float64)
    y = torch.full((m, 4), float("nan")) if fault == "nan" else torch.randn(m, 4, dtype=torch.float64)
    try:
        executor = PipelineExecutor(schedule, mine, nn.functional.mse_loss, timeout=timeout)
        executor.step(x, y)
    except PipelineError as err:
        if fault in ("wrong-stages", "world"):
            return str(err)
        raise
    return None
