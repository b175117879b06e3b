"""Run one rank's share of a pipeline schedule on torch.distributed.

`PipelineExecutor(schedule, stage_modules, loss_fn)` on every rank, then
`step(inputs, targets)` per training step, then the caller's optimizer step.
The schedule file is the contract (docs/design.md section 7): each rank runs its
device's action list in order; receives are posted ahead (see plan.py for the
order and why it cannot deadlock) and waited on just before the pass that
consumes them; sends never block; neighbouring stages on one rank hand
tensors over in memory.

Waiting: on gloo a wait blocks the host, `timeout` at most, then raises
PipelineTimeoutError. On NCCL a wait is stream-ordered (the compute stream
waits for the transfer, the host goes on queueing passes, as in
torch.distributed.pipelining), so it cannot time out where it is called:
a watchdog thread (watchdog.py) ends the process naming rank, action and
peer if the op has not completed `timeout` s after the wait. The host can
run up to one step ahead of the GPU, so `timeout` must exceed a step.
A send's buffer is kept until is_completed() says the transfer is done.

Shapes: the first `step` runs a handshake along the stages (0, 1, ...): each
rank infers its stages' output shapes with a forward on meta tensors (no
compute, no side effects) and sends them to the next stage's rank. Every
later step must use the same batch shape.
"""

from __future__ import annotations

import datetime
import math
import time
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.graph import get_gradient_edge
from torch.func import functional_call

from pipesynth.core.rules import PassKey, memory_change
from pipesynth.core.schedule import Action, Schedule
from pipesynth.core.validate import validate
from pipesynth.runtime.errors import NonFiniteLossError, PipelineError, PipelineTimeoutError
from pipesynth.runtime.graph_split import WeightBranches
from pipesynth.runtime.memory import ActivationMeter
from pipesynth.runtime.p2p import CommOp, Message, TensorMeta, messages, rank_ops
from pipesynth.runtime.passes import graph_split_params, input_backward, weight_backward
from pipesynth.runtime.split import (
    WeightGradTask,
    make_splittable,
)
from pipesynth.runtime.watchdog import Watchdog


@dataclass
class StepStats:
    """What one rank measured in its last step."""

    seconds: float
    peak_bytes: int  # live saved activations (saved-tensor hooks); 0 when not tracked
    cuda_peak_bytes: int | None  # max_memory_allocated growth during the step, on CUDA


class PipelineExecutor:
    """One rank of a pipeline: its stage modules, its action list, its P2P plan.

    stage_modules: {stage: module} for exactly the stages the schedule places
    on this rank. loss_fn(output, target) must be a mean over the microbatch,
    so the mean of the microbatch losses is the mean loss of the batch.
    With split backward, nn.Linear / nn.Embedding inside the modules are
    switched in place to their split twins (split.py), LayerNorm weights
    get their (cheap) gradients in B, and any other parameter is split off along the autograd graph (graph_split.py;
    a float input of stage 0 is then made to require a gradient for the
    split, an integer one cannot: those parameters then get their gradients
    in B).
    `step` returns the mean loss on the rank holding the last stage and None
    elsewhere (or on every rank with broadcast_loss=True).
    `grads_ready(stage, module)`, if given, is called during `step` right
    after a stage's last pass of the step: its gradients are final, so an
    optimizer can update that stage while later passes still run.
    """

    def __init__(
        self,
        schedule: Schedule,
        stage_modules: dict[int, nn.Module],
        loss_fn,
        *,
        rank: int | None = None,
        group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        timeout: float = 60.0,
        track_memory: bool = True,
        broadcast_loss: bool = False,
        grads_ready: Callable[[int, nn.Module], None] | None = None,
    ) -> None:
        self.schedule = schedule
        self.problem = schedule.problem
        self.group = group
        self.rank = dist.get_rank(group) if rank is None else rank
        self.timeout = timeout
        self.loss_fn = loss_fn
        self.broadcast_loss = broadcast_loss
        self.modules = dict(stage_modules)
        self.device = torch.device(device) if device is not None else _device_of(self.modules)
        self.nccl = dist.get_backend(group) == "nccl"
        self._watchdog = Watchdog(self.rank, timeout)  # its thread starts with the first NCCL wait
        weakref.finalize(self, self._watchdog.stop)
        self._in_flight: list[tuple[dist.Work, torch.Tensor]] = []  # NCCL sends waited on, maybe not done
        self.meter = ActivationMeter() if track_memory else None
        self._check(dist.get_world_size(group))
        # Stages with parameters outside the split layers (and LayerNorms, whose weight gradient
        # B computes) split their backward along the autograd graph; it then covers LayerNorms too.
        self._graph_split: dict[int, list[torch.Tensor]] = {}
        if self.problem.split_backward:
            for s, module in self.modules.items():
                params = graph_split_params(make_splittable(module))
                if params is not None:
                    self._graph_split[s] = params
        self.actions: list[Action] = schedule.actions[self.rank]
        self.grads_ready = grads_ready
        self._last_pass = {a.stage: i for i, a in enumerate(self.actions)}
        self.last_stage = self.problem.stages - 1
        self.stats: StepStats | None = None
        self._ops: list[CommOp] | None = None  # set by the shape handshake of the first step
        self._in_meta: dict[int, TensorMeta] = {}
        self._out_meta: dict[int, TensorMeta] = {}
        self._stage_bytes: dict[int, tuple[int, int]] = {}

    # ----------------------------------------------------------------- set-up

    def _check(self, world: int) -> None:
        """Validate the schedule and its fit with the modules; the same error on every rank."""
        validate(self.schedule)
        p = self.problem
        if world != p.devices:
            raise PipelineError(
                f"rank {self.rank}: the schedule has {p.devices} devices but the world has {world} ranks"
            )
        held: list[list[int] | None] = [None] * world
        dist.all_gather_object(held, sorted(self.modules), group=self.group)
        for r, stages in enumerate(held):
            expected = p.stages_on(r)
            if stages != expected:
                raise PipelineError(
                    f"rank {self.rank}: rank {r} was given modules for stages {stages}, "
                    f"but the schedule places stages {expected} on it ({p.stages} stages in all)"
                )

    def _peer(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def _handshake(self, first_input: torch.Tensor | None) -> None:
        """Learn the shape of every tensor this rank receives, then fix its P2P plan."""
        place = self.problem.placement
        pending = []
        for s in sorted(self.modules):
            if s == 0:
                meta = TensorMeta(tuple(first_input.shape), first_input.dtype)
            elif place[s - 1] == self.rank:
                meta = self._out_meta[s - 1]
            else:
                buf = TensorMeta.buffer(self.device)
                work = dist.irecv(buf, src=self._peer(place[s - 1]), group=self.group)
                self._wait(work, f"shape handshake for stage {s}", place[s - 1], "receiving the input shape")
                meta = TensorMeta.decode(buf)
            self._in_meta[s] = meta
            if s == self.last_stage:
                continue
            self._out_meta[s] = out = self._infer(s, meta)
            if place[s + 1] != self.rank:
                buf = out.encode(self.device)
                pending.append((dist.isend(buf, dst=self._peer(place[s + 1]), group=self.group), buf, s))
        for work, buf, s in pending:
            self._wait_send(work, buf, f"shape handshake for stage {s + 1}", place[s + 1], "sending the output shape")
        grad_into = {s for s, m in self._in_meta.items() if s > 0 and m.dtype.is_floating_point}
        grad_into |= {s + 1 for s, m in self._out_meta.items() if m.dtype.is_floating_point}
        self._ops = rank_ops(messages(self.schedule, grad_into), self.rank)
        self._recv_for = {op.message.consumer: op.message for op in self._ops if op.kind == "recv"}
        self._send_of = {op.message.producer: op.message for op in self._ops if op.kind == "send"}

    def _infer(self, stage: int, meta: TensorMeta) -> TensorMeta:
        module = self.modules[stage]
        fake = {k: torch.empty_like(v, device="meta") for k, v in (*module.named_parameters(), *module.named_buffers())}
        try:
            with torch.no_grad():
                out = functional_call(module, fake, (torch.empty(meta.shape, dtype=meta.dtype, device="meta"),))
        except Exception as err:
            raise PipelineError(
                f"rank {self.rank}: stage {stage} cannot infer its output shape on meta tensors: {err}"
            ) from err
        if not isinstance(out, torch.Tensor):
            raise PipelineError(f"rank {self.rank}: stage {stage} must return one tensor, got {type(out).__name__}")
        return TensorMeta(tuple(out.shape), out.dtype)

    # ------------------------------------------------------------------ comm

    def _wait(self, work: dist.Work, action: str, peer: int, doing: str) -> None:
        """Wait for a P2P op at most `timeout` seconds; else fail naming rank, action and peer.

        NCCL: stream-ordered, the watchdog bounds it (module docstring).
        """
        start = time.monotonic()
        try:
            if self.nccl:
                self._watchdog.watch(work, action, peer, doing)  # first: bounds a wait() that blocks after all
                work.wait()
            else:
                work.wait(timeout=datetime.timedelta(seconds=self.timeout))
        except RuntimeError as err:
            cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PipelineTimeoutError(
                f"rank {self.rank}, {action}: {doing} with rank {peer} failed after "
                f"{time.monotonic() - start:.1f} s (timeout {self.timeout:g} s): {cause}"
            ) from None

    def _post(self) -> None:
        """Post, in plan order, every op that is ready: receives always, sends once produced."""
        while self._next < len(self._ops):
            op = self._ops[self._next]
            msg = op.message
            if op.kind == "send":
                tensor = self._outbox.pop(msg.index, None)
                if tensor is None:
                    return
                work = dist.isend(tensor, dst=self._peer(msg.dst), group=self.group, tag=msg.index)
                self._sending.append((work, tensor, msg))
            else:
                meta = self._in_meta[msg.consumer[1]] if msg.kind == "activation" else self._out_meta[msg.consumer[1]]
                buf = torch.empty(meta.shape, dtype=meta.dtype, device=self.device)
                work = dist.irecv(buf, src=self._peer(msg.src), group=self.group, tag=msg.index)
                self._receiving[msg.index] = (work, buf)
            self._next += 1

    def _wait_send(self, work: dist.Work, tensor: torch.Tensor, action: str, peer: int, doing: str) -> None:
        """Wait for a send; on NCCL it may still be running after the wait: keep its buffer until it is done."""
        self._wait(work, action, peer, doing)
        if self.nccl and not work.is_completed():
            self._in_flight.append((work, tensor))

    def _reap_sends(self, finished_only: bool) -> None:
        """Drop the buffers of completed sends (surfacing their errors); wait for all unless `finished_only`.

        Never blocks the host on NCCL (is_completed and stream-ordered waits only).
        """
        pending = []
        for work, tensor, msg in self._sending:
            if finished_only and not work.is_completed():
                pending.append((work, tensor, msg))
            else:
                self._wait_send(work, tensor, str(Action(*msg.producer)), msg.dst, f"sending the {msg}")
        self._sending = pending
        self._in_flight = [(work, tensor) for work, tensor in self._in_flight if not work.is_completed()]

    def _take(self, key: PassKey, action: Action) -> torch.Tensor:
        """The tensor `action` consumes: handed over in memory or received."""
        if key in self._handover:
            return self._handover.pop(key)
        msg = self._recv_for[key]
        work, buf = self._receiving.pop(msg.index)
        self._wait(work, str(action), msg.src, f"receiving the {msg}")
        return buf

    def _give(self, producer: PassKey, consumer: PassKey, tensor: torch.Tensor) -> None:
        msg = self._send_of.get(producer)
        if msg is None:
            self._handover[consumer] = tensor
        else:
            self._outbox[msg.index] = tensor.contiguous()

    # ------------------------------------------------------------------ step

    def step(self, inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """Run one iteration; parameter .grad then hold the gradients of the mean loss.

        `inputs` is needed on the rank holding stage 0 and `targets` on the
        rank holding the last stage (passing both everywhere is fine). The
        batch size must be a multiple of the schedule's microbatches.
        """
        m = self.problem.microbatches
        self._in_chunks = self._chunks(inputs, 0, "inputs")
        self._target_chunks = self._chunks(targets, self.last_stage, "targets")
        if self._ops is None:
            self._handshake(self._in_chunks[0] if self._in_chunks else None)
        elif self._in_chunks and tuple(self._in_chunks[0].shape) != self._in_meta[0].shape:
            raise PipelineError(
                f"rank {self.rank}: microbatch shape {tuple(self._in_chunks[0].shape)} differs from the first "
                f"step's {self._in_meta[0].shape}; every step must use the same batch shape"
            )
        self._next = 0
        self._outbox: dict[int, torch.Tensor] = {}
        self._sending: list[tuple[dist.Work, torch.Tensor, Message]] = []
        self._receiving: dict[int, tuple[dist.Work, torch.Tensor]] = {}
        self._handover: dict[PassKey, torch.Tensor] = {}
        self._inputs: dict[tuple[int, int], torch.Tensor] = {}
        self._outputs: dict[tuple[int, int], object] = {}
        self._w_tasks: dict[tuple[int, int], tuple[list[WeightGradTask], WeightBranches | None]] = {}
        self._losses: list[torch.Tensor] = []
        if self.meter is not None:
            self.meter.exclude([*self._params(), *(b for mod in self.modules.values() for b in mod.buffers())])
            self.meter.reset_peak()
        cuda = self.device.type == "cuda"
        if cuda:
            # Step boundaries only (no overlap lost inside the step): the step's time and
            # memory peak then leave out the caller's optimizer step still running on the GPU.
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            cuda_base = torch.cuda.memory_allocated(self.device)
        start = time.perf_counter()
        base_level = self.meter.level if self.meter else 0

        run = {"F": self._forward, "B": self._backward, "W": self._weight}
        self._post()
        for position, action in enumerate(self.actions):
            run[action.op](action)
            self._post()  # first thing after a pass: its output goes on the wire before any bookkeeping
            self._reap_sends(finished_only=True)
            if self.grads_ready is not None and self._last_pass[action.stage] == position:
                self.grads_ready(action.stage, self.modules[action.stage])
        self._reap_sends(finished_only=False)

        loss = torch.stack(self._losses).sum() / m if self._losses else None
        if self.broadcast_loss:
            loss = self._broadcast(loss)
        if cuda:
            torch.cuda.synchronize(self.device)  # NCCL: every transfer of the step has completed now
            self._reap_sends(finished_only=True)  # so their buffers go
        self.stats = StepStats(
            seconds=time.perf_counter() - start,
            peak_bytes=self.meter.peak - base_level if self.meter else 0,
            cuda_peak_bytes=torch.cuda.max_memory_allocated(self.device) - cuda_base if cuda else None,
        )
        if loss is not None and not math.isfinite(loss.item()):
            bad = [j for j, v in enumerate(self._losses) if not math.isfinite(v.item())]
            where = f"microbatches {bad}" if bad else "another rank's microbatches"
            raise NonFiniteLossError(f"rank {self.rank}: the loss is {loss.item()} ({where}); gradients not usable")
        return loss

    def _chunks(self, batch: torch.Tensor | None, stage: int, name: str) -> list[torch.Tensor]:
        if stage not in self.modules:
            return []
        m = self.problem.microbatches
        if batch is None:
            raise PipelineError(f"rank {self.rank}: holds stage {stage}, so step() needs {name}")
        if batch.shape[0] % m:
            raise PipelineError(
                f"rank {self.rank}: {name} batch of {batch.shape[0]} does not split into {m} equal microbatches"
            )
        # One copy per microbatch: its memory is its own (freed with it, counted per microbatch as profiled).
        return [c.to(self.device, copy=True) for c in batch.chunk(m)]

    def _broadcast(self, loss: torch.Tensor | None) -> torch.Tensor:
        src = self.problem.placement[self.last_stage]
        value = loss if loss is not None else torch.empty((), dtype=torch.float64, device=self.device)
        value = value.to(torch.float64).to(self.device)
        dist.broadcast(value, src=self._peer(src), group=self.group)
        return value

    def _params(self) -> list[torch.Tensor]:
        return [p for mod in self.modules.values() for p in mod.parameters()]

    def _forward(self, action: Action) -> None:
        s, j = action.stage, action.mb
        x = self._in_chunks[j] if s == 0 else self._take(("F", s, j), action)
        # Stage 0's input needs no gradient, but the graph split needs an input path to split along.
        if x.dtype.is_floating_point and (s > 0 or s in self._graph_split):
            x = x.detach().requires_grad_(True)
            self._inputs[(s, j)] = x
        with self.meter.saving() if self.meter else nullcontext():
            before = self.meter.level if self.meter else 0
            out = self.modules[s](x)
            if s == self.last_stage:
                loss = self.loss_fn(out, self._target_chunks[j])
                self._losses.append(loss.detach())
                out = loss / self.problem.microbatches
        if self.meter and j == 0:
            self._stage_bytes[s] = (self.meter.level - before, 0)
        if s == self.last_stage:
            self._outputs[(s, j)] = out
            return
        self._outputs[(s, j)] = get_gradient_edge(out) if out.requires_grad else None
        self._give(("F", s, j), ("F", s + 1, j), out.detach())

    def _backward(self, action: Action) -> None:
        s, j = action.stage, action.mb
        grad = None if s == self.last_stage else self._take(("B", s, j), action)
        out = self._outputs.pop((s, j))
        x = self._inputs.pop((s, j), None)
        before = self.meter.level if self.meter else 0
        grads = None if grad is None else [grad]
        if out is not None and self.problem.split_backward:
            params = self._graph_split.get(s)
            self._w_tasks[(s, j)] = input_backward(out, grads, x, params, self.meter.hold if self.meter else None)
        elif out is not None:
            torch.autograd.backward([out], grads)
        del out, grad
        if self.meter and j == 0:
            act = self._stage_bytes[s][0]
            self._stage_bytes[s] = (act, act + self.meter.level - before)
        if x is not None and s > 0:
            gx = x.grad if x.grad is not None else torch.zeros_like(x)
            self._give(("B", s, j), ("B", s - 1, j), gx)

    def _weight(self, action: Action) -> None:
        weight_backward(*self._w_tasks.pop((action.stage, action.mb), ([], None)))

    # ---------------------------------------------------------------- memory

    def stage_bytes(self) -> dict[int, tuple[int, int]]:
        """Per stage of this rank, bytes one microbatch keeps after F and still keeps after B (last step)."""
        return dict(self._stage_bytes)

    def predicted_peak_bytes(self) -> float:
        """The schedule's peak for this rank: docs/design.md's memory walk of its list with profiled bytes.

        F adds the stage's activation; B releases activation - kept (fused:
        all of it); W releases kept. Profiled kept can exceed the activation
        (W holds output gradients that B creates), so B may add memory: the
        walk allows it, where a Problem would not.
        """
        if not self._stage_bytes:
            raise PipelineError(f"rank {self.rank}: run a step with track_memory=True before predicting memory")
        level = peak = 0
        for a in self.actions:
            act, kept = self._stage_bytes[a.stage]
            level += memory_change(a.op, act, kept, self.problem.split_backward)
            peak = max(peak, level)
        return float(peak)


def _device_of(modules: dict[int, nn.Module]) -> torch.device:
    for module in modules.values():
        for p in module.parameters():
            return p.device
    return torch.device("cpu")
