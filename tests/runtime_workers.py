"""Rank functions for the runtime tests (importable by spawned processes)."""

from __future__ import annotations

import torch
from torch import nn

from pipesynth.formats.schedule_json import loads
from pipesynth.runtime.executor import PipelineExecutor
from pipesynth.runtime.models import split_layers


class Scale(nn.Module):
    """Raw parameters outside the split layers: exercises the graph split (or, shared, its fused fallback)."""

    def __init__(self, width: int, shared: bool) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(width) * 0.1)
        self.b = nn.Parameter(torch.randn(width) * 0.1)
        self.shared = shared

    def forward(self, x):
        if self.shared:  # w reaches the input path twice: no safe split
            return x * self.w.exp() + self.w.tanh()
        return x * self.w.exp() + self.b


def mlp(layers: int, width: int, seed: int) -> list[nn.Module]:
    """Layers cycling through Linear; LayerNorm+Linear+Tanh; Linear+raw-parameter scale (float64)."""
    torch.manual_seed(seed)
    out: list[nn.Module] = []
    for i in range(layers):
        kind = i % 3
        if kind == 0:
            out.append(nn.Linear(width, width))
        elif kind == 1:
            out.append(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.Tanh()))
        else:
            out.append(nn.Sequential(nn.Linear(width, width), Scale(width, shared=i % 6 == 5)))
    return [m.double() for m in out]


def compare_with_reference(rank, world, device, schedule_texts, steps=3, width=6):
    """Train each schedule and the single-process model side by side; return the worst differences.

    Also checks that grads_ready fires once per stage and step, with that stage's final gradients.
    """
    results = []
    for text in schedule_texts:
        schedule = loads(text)
        stages = schedule.problem.stages
        m = schedule.problem.microbatches
        ref_layers = mlp(stages, width, seed=1)
        ref = nn.Sequential(*ref_layers)
        pipe_layers = [layer.to(device) for layer in mlp(stages, width, seed=1)]  # the reference stays on CPU
        parts = split_layers(pipe_layers, [1] * stages)
        mine = {s: parts[s] for s in schedule.problem.stages_on(rank)}
        ready: dict[int, list] = {}  # stage -> its gradients when grads_ready fired

        def snapshot(stage, module, ready=ready):
            assert stage not in ready, f"grads_ready fired twice for stage {stage}"
            ready[stage] = [None if p.grad is None else p.grad.clone() for p in module.parameters()]

        executor = PipelineExecutor(schedule, mine, nn.functional.mse_loss, timeout=20, grads_ready=snapshot)
        hook_ok = True
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
            ready.clear()
            loss = executor.step(x, target=y)
            hook_ok &= sorted(ready) == sorted(mine) and all(
                (a is None and p.grad is None) or (a is not None and torch.equal(a, p.grad))
                for s, mod in mine.items()
                for a, p in zip(ready[s], mod.parameters())
            )
            if loss is not None:
                worst_loss = max(worst_loss, abs(loss.item() - ref_loss.item()))
            for s, mod in mine.items():
                for p, q in zip(mod.parameters(), ref_layers[s].parameters()):
                    if p.grad is None or q.grad is None:  # an unused parameter must stay without gradient
                        worst_grad = max(worst_grad, 0.0 if p.grad is q.grad else float("inf"))
                    else:
                        worst_grad = max(worst_grad, (p.grad.cpu() - q.grad).abs().max().item())
            opt_ref.step()
            opt.step()
        results.append((schedule.name, worst_loss, worst_grad, hook_ok))
    return results


def solved(devices: int, microbatches: int) -> str:
    """A CP-SAT schedule: V placement, unequal costs, capped at 0.75x of 1F1B's memory."""
    from pipesynth.core.problem import make_problem, parse_cap
    from pipesynth.formats.schedule_json import dumps
    from pipesynth.solver import solve

    problem = make_problem(devices, microbatches, "v", cost={"F": 3, "B": 4, "W": 2})
    problem = problem.with_cap(parse_cap("0.75x", problem))
    return dumps(solve(problem, time_limit=2, workers=1, deterministic=True).schedule)


def random_order(problem, seed: int):
    """A random valid schedule (see orders.random_valid_order)."""
    import random

    from orders import random_valid_order

    from pipesynth.core.simulate import from_order

    return from_order(problem, random_valid_order(problem, random.Random(seed)), f"random-{seed}")


class Stall(nn.Module):
    """A stage that, once armed, sleeps far past any timeout (a hung peer)."""

    armed = False

    def forward(self, x):
        import time

        if self.armed:
            time.sleep(60)
        return x


class Boom(nn.Module):
    def forward(self, x):
        if x.device.type != "meta":
            raise RuntimeError("boom in stage forward")
        return x


def faulty_run(rank, world, device, schedule_text, fault, timeout=5.0):
    """Run one step with a fault injected; return this rank's error message (or None)."""
    from pipesynth.runtime.errors import PipelineError

    schedule = loads(schedule_text)
    stages = schedule.problem.stages
    parts = split_layers([layer.to(device) for layer in mlp(stages, 4, seed=1)], [1] * stages)
    mine = {s: parts[s] for s in schedule.problem.stages_on(rank)}
    if fault.startswith("stall") and rank == 1:
        mine = {s: Stall() for s in mine}
    if fault == "raise" and rank == 1:
        mine = {s: Boom() for s in mine}
    if fault == "wrong-stages" and rank == 1:
        mine[0] = parts[0]
    m = schedule.problem.microbatches
    x = torch.randn(m, 4, dtype=torch.float64)
    y = torch.full((m, 4), float("nan")) if fault == "nan" else torch.randn(m, 4, dtype=torch.float64)
    try:
        executor = PipelineExecutor(schedule, mine, nn.functional.mse_loss, device=device, timeout=timeout)
        if fault == "stall-watchdog":
            executor.nccl = True  # the NCCL wait path on gloo: wait() then the watchdog (gloo's wait blocks)
        if fault.startswith("stall"):
            executor.step(x, target=y)  # a first step goes through, so the time-out hits a pass, not the set-up
            Stall.armed = True
        executor.step(x, target=y)
    except PipelineError as err:
        if fault in ("wrong-stages", "world"):
            return str(err)
        raise
    return None


def memory_run(rank, world, device, texts, cfg):
    """One training step of the tiny GPT per schedule: (measured, predicted) peak bytes of this rank."""
    from pipesynth.runtime.train import train_rank

    out = []
    for text in texts:
        report = train_rank(rank, world, device, text, cfg)
        out.append((report["measured_peak_bytes"], report["predicted_peak_bytes"]))
    return out


PHASE = ["-"]
CALLS: list[tuple[str, int, str]] = []


class _Probe(torch.autograd.Function):
    """Identity that logs, when its backward runs, which pass (B or W) the executor is in."""

    @staticmethod
    def forward(ctx, x, name, stage):
        ctx.name, ctx.stage = name, stage
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        CALLS.append((ctx.name, ctx.stage, PHASE[0]))
        return grad, None, None


class ProbeStage(nn.Module):
    """out = probe_main(x + probe_weight(w)): a raw parameter like the delay workload's stages."""

    def __init__(self, stage: int) -> None:
        super().__init__()
        self.stage = stage
        self.w = nn.Parameter(torch.zeros(4, dtype=torch.float64))

    def forward(self, x):
        return _Probe.apply(x + _Probe.apply(self.w, "weight", self.stage), "main", self.stage)


def phase_run(rank, world, device, schedule_text):
    """Which pass ran each backward branch, per stage, over one step."""
    schedule = loads(schedule_text)
    mine = {s: ProbeStage(s) for s in schedule.problem.stages_on(rank)}
    executor = PipelineExecutor(schedule, mine, nn.functional.mse_loss, timeout=20)
    for op, name in (("B", "_backward"), ("W", "_weight")):
        run = getattr(executor, name)

        def traced(action, run=run, op=op):
            PHASE[0] = op
            run(action)
            PHASE[0] = "-"

        setattr(executor, name, traced)
    m = schedule.problem.microbatches
    executor.step(torch.randn(m, 4, dtype=torch.float64), target=torch.randn(m, 4, dtype=torch.float64))
    grads = {s: mod.w.grad is not None for s, mod in mine.items()}
    return CALLS, grads


def peer_fails_run(rank, world, device):
    """Rank 1 raises at once; rank 0 waits for a tensor from it and sees its connection close (a symptom)."""
    if rank == 1:
        raise RuntimeError("the real cause")
    torch.distributed.recv(torch.zeros(1), 1)


class TanhStage(nn.Module):
    """tanh(linear(sin(x)) + w): a graph-split stage (raw w) whose input path has a split Linear and an
    op that saves its own output (tanh), so B's retained graph holds saved activations until W."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4, dtype=torch.float64)
        self.w = nn.Parameter(torch.zeros(4, dtype=torch.float64))

    def forward(self, x):
        return torch.tanh(self.linear(x.sin()) + self.w)


def leftover_run(rank, world, device, schedule_text, steps=3):
    """Per step, with .grad None at the first and kept (never zeroed) after: the saved bytes still
    live once the step returns (memory tracked), and whether any .grad carries autograd history
    (tracked, then untracked: the meter's handles must not be what keeps W's products clean)."""
    schedule = loads(schedule_text)
    m = schedule.problem.microbatches
    out = []
    for track in (True, False):
        mine = {s: TanhStage() for s in schedule.problem.stages_on(rank)}
        executor = PipelineExecutor(schedule, mine, nn.functional.mse_loss, timeout=20, track_memory=track)
        for _ in range(steps):
            executor.step(torch.randn(m, 4, dtype=torch.float64), target=torch.randn(m, 4, dtype=torch.float64))
            history = any(p.grad.requires_grad for mod in mine.values() for p in mod.parameters())
            out.append((executor.meter.level if track else 0, history))
    return sorted(executor._graph_split), out
