"""Run one rank's share of a pipeline schedule on torch.distributed.

`PipelineExecutor(schedule, stage_modules, loss_fn)` on every rank, then
`step(*inputs, target=..., **kwargs)` per training step (or `eval_step` for
forward passes only), then the caller's optimizer step. The schedule file is
the contract (docs/design.md section 7): each rank runs its device's action
list in order; receives are posted ahead (see p2p.py for the order and why
it cannot deadlock) and waited on just before the pass that consumes them;
sends never block; neighbouring stages on one rank hand tensors over in
memory.

What crosses a boundary is any tree of tensors (payload.py): one P2P op per
tensor. Shapes are learnt every step: the first message of each boundary
and direction in a step brings a header (the layout of the producing
stage's output, with every tensor's shape and dtype), so a smaller last
batch or a new sequence length needs nothing from the caller. A rank posts
a receive once its shapes are known; gradients have the shapes of the
stage's own outputs. A bad-input error (a stage output of the wrong kind,
inputs that do not split into microbatches) travels in the headers this
rank still owes, so the peers raise it too instead of timing out.

Waiting: on gloo a wait blocks the host, `timeout` at most, then raises
PipelineTimeoutError. On NCCL a wait is stream-ordered (the compute stream
waits for the transfer, the host goes on queueing passes, as in
torch.distributed.pipelining), so it cannot time out where it is called:
a watchdog thread (watchdog.py) ends the process naming rank, action and
peer if the op has not completed `timeout` s after the wait. The host can
run up to one step ahead of the GPU, so `timeout` must exceed a step.
A send's buffer is kept until is_completed() says the transfer is done.

Precision: run `step` inside torch.autocast (split layers cast as autocast
does, split.py) or give bf16/fp16 modules; gradients keep the parameters'
dtype. With fp16, pass a GradScaler as `scaler`.
"""

from __future__ import annotations

import datetime
import math
import time
import weakref
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.graph import get_gradient_edge

from pipesynth.core.problem import placement_kind
from pipesynth.core.rules import PassKey, memory_change
from pipesynth.core.schedule import Action, Schedule
from pipesynth.core.validate import validate
from pipesynth.runtime.errors import NonFiniteLossError, PipelineError, PipelineStoppedError, PipelineTimeoutError
from pipesynth.runtime.graph_split import WeightBranches
from pipesynth.runtime.memory import ActivationMeter
from pipesynth.runtime.p2p import Message, messages, rank_ops
from pipesynth.runtime.passes import graph_split_params, input_backward, weight_backward
from pipesynth.runtime.payload import (
    Layout,
    TensorSpec,
    decode_header,
    encode_header,
    first_batch_size,
    flatten,
    header_buffer,
    merge,
    split_batch,
    unflatten,
)
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
    on this rank. A stage returns a tensor, a tuple/list or a dict of tensors
    (constants may sit among them); the next stage takes them as its one,
    positional or keyword arguments (payload.py). Float tensors that require
    grad take a gradient back; the others travel forward only.
    loss_fn(output, target) (loss_fn(output) when step gets no target; None:
    the last stage returns the loss itself) must be a mean over the
    microbatch, so the mean of the microbatch losses is the mean loss of the
    batch.
    With split backward, nn.Linear / nn.Embedding inside the modules are
    switched in place to their split twins (split.py), norm weights get their
    (cheap) gradients in B, and any other parameter is split off along the
    autograd graph (graph_split.py; the float inputs of stage 0 are then made
    to require a gradient for the split; without any, those parameters get
    their gradients in B).
    `scaler` (a torch.amp.GradScaler, e.g. ShardedGradScaler over the
    pipeline's group so that every rank skips the same steps): the loss is
    scaled before its backward. `keep_outputs`: keep the last stage's outputs
    of each step (detached, merged) in `last_outputs`.
    `step` returns the mean loss on the rank holding the last stage and None
    elsewhere (or on every rank with broadcast_loss=True).
    `grads_ready(stage, module)`, if given, is called during `step` right
    after a stage's last pass of the step: its gradients are final, so an
    optimizer can update that stage while later passes still run.
    After a PipelineError the executor cannot be used again.
    """

    def __init__(
        self,
        schedule: Schedule,
        stage_modules: dict[int, nn.Module],
        loss_fn: Callable[..., torch.Tensor] | None,
        *,
        rank: int | None = None,
        group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        timeout: float = 60.0,
        track_memory: bool = True,
        broadcast_loss: bool = False,
        grads_ready: Callable[[int, nn.Module], None] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        keep_outputs: bool = False,
    ) -> None:
        self.schedule = schedule
        self.problem = schedule.problem
        self.group = group
        self.rank = dist.get_rank(group) if rank is None else rank
        self.timeout = timeout
        self.loss_fn = loss_fn
        self.broadcast_loss = broadcast_loss
        self.scaler = scaler
        self.keep_outputs = keep_outputs
        self.last_outputs: Any = None
        self.modules = dict(stage_modules)
        self.device = torch.device(device) if device is not None else device_of(self.modules)
        self.nccl = dist.get_backend(group) == "nccl"
        if scaler is not None:  # its scale exists from the first scale() on: make it on every rank, for step()
            scaler.scale(torch.zeros((), device=self.device))
        self._watchdog = Watchdog(self.rank, timeout)  # its thread starts with the first NCCL wait
        weakref.finalize(self, self._watchdog.stop)
        self._in_flight: list[tuple[dist.Work, torch.Tensor]] = []  # NCCL sends waited on, maybe not done
        self.meter = ActivationMeter() if track_memory else None
        self._check()
        # Stages with parameters outside the split layers (and norms, whose weight gradient
        # B computes) split their backward along the autograd graph; it then covers the norms too.
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
        msgs = messages(schedule)
        self._train_ops = rank_ops(msgs, self.rank)
        self._eval_ops = rank_ops(msgs, self.rank, forward_only=True)
        self._recv_for = {m.consumer: m for m in msgs if m.dst == self.rank}
        self._send_of = {m.producer: m for m in msgs if m.src == self.rank}
        self._stage_bytes: dict[int, tuple[int, int]] = {}
        self._shared_bytes: dict[int, int] = {}  # stage -> what its first F of a step saves once for all

    # ----------------------------------------------------------------- set-up

    def _check(self) -> None:
        """Validate the schedule and its fit with the modules; the same error on every rank."""
        validate(self.schedule)
        check_placement(self.schedule, sorted(self.modules), self.group)

    def _peer(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

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

    def _send(self, tensor: torch.Tensor, msg: Message, tag: int) -> None:
        work = dist.isend(tensor, dst=self._peer(msg.dst), group=self.group, tag=tag)
        self._sending.append((work, tensor, msg))

    def _post(self) -> None:
        """Post, in plan order, every op that is ready: a send once produced, a receive once its tensors'
        shapes are known (from the boundary's header this step, or for gradients from the stage's own
        output). A header is posted ahead of its message's tensors (docs/design.md section 7)."""
        while self._next < len(self._ops):
            op = self._ops[self._next]
            msg = op.message
            if op.kind == "send":
                tensors = self._outbox.pop(msg.index, None)
                if tensors is None:
                    return
                if msg.header:
                    content = self._layouts_out[msg.producer[1]] if msg.kind == "activation" else None
                    self._send(encode_header(content, f"stage {msg.producer[1]}", self.device), msg, msg.tag_header)
                    self._headers_sent.add(msg.index)
                for t, tensor in enumerate(tensors):
                    self._send(tensor, msg, msg.tag(t))
            else:
                if msg.header and msg.index not in self._headers:
                    buf = header_buffer(self.device)
                    work = dist.irecv(buf, src=self._peer(msg.src), group=self.group, tag=msg.tag_header)
                    self._headers[msg.index] = (work, buf)
                specs = self._recv_specs(msg)
                if specs is None:
                    return
                bufs = [torch.empty(spec.shape, dtype=spec.dtype, device=self.device) for spec in specs]
                works = [
                    dist.irecv(buf, src=self._peer(msg.src), group=self.group, tag=msg.tag(t))
                    for t, buf in enumerate(bufs)
                ]
                self._receiving[msg.index] = (works, bufs)
            self._next += 1

    def _recv_specs(self, msg: Message) -> list[TensorSpec] | None:
        """The tensors `msg` brings, or None while not known yet (the step's header has not come)."""
        if msg.kind == "gradient":
            layout = self._layouts_out.get(msg.consumer[1])
            return None if layout is None else [layout.specs[i] for i in layout.grad_indices]
        layout = self._layouts_in.get(msg.boundary)
        if layout is None:
            first = self._first_header[("activation", msg.boundary)]
            work, _ = self._headers[first.index]
            if not work.is_completed():
                return None
            self._read_header(first)
            layout = self._layouts_in[msg.boundary]
        return list(layout.specs)

    def _read_header(self, msg: Message) -> None:
        """Receive `msg`'s header: keep the layout it brings, or raise the error a peer sent in it."""
        if msg.index in self._headers_read:
            return
        work, buf = self._headers[msg.index]
        self._wait(work, str(Action(*msg.consumer)), msg.src, f"receiving the header of the {msg}")
        content = decode_header(buf)
        self._headers_read.add(msg.index)
        if isinstance(content, str):
            raise PipelineStoppedError(f"rank {self.rank}: stopped by rank {msg.src}: {content}", msg.src)
        if msg.kind == "activation":
            self._layouts_in[msg.boundary] = content

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

    def _take(self, key: PassKey, action: Action) -> tuple[Layout, list[torch.Tensor]]:
        """What `action` consumes: handed over in memory or received (its layout and tensors)."""
        if key in self._handover:
            return self._handover.pop(key)
        msg = self._recv_for[key]
        if msg.header:
            self._read_header(msg)
        while msg.index not in self._receiving:  # posting waits on an earlier header: receive it now
            blocked = self._ops[self._next].message
            if blocked.kind != "activation" or ("activation", blocked.boundary) not in self._first_header:
                raise PipelineError(f"rank {self.rank}, {action}: the {msg} cannot be posted (P2P plan broken)")
            self._read_header(self._first_header[("activation", blocked.boundary)])
            self._post()
        works, bufs = self._receiving.pop(msg.index)
        for work in works:
            self._wait(work, str(action), msg.src, f"receiving the {msg}")
        if msg.kind == "gradient":
            return self._layouts_out[msg.consumer[1]], bufs
        return self._layouts_in[msg.boundary], bufs

    def _give(self, producer: PassKey, consumer: PassKey, layout: Layout | None, tensors: list[torch.Tensor]) -> None:
        """Hand `tensors` to the consumer on this rank, or queue them to send (`layout`: of activations)."""
        msg = self._send_of.get(producer)
        if msg is None:
            self._handover[consumer] = (layout, tensors)
        else:
            self._outbox[msg.index] = [t.contiguous() for t in tensors]

    def _fail(self, err: PipelineError) -> None:
        """Tell the peers still waiting for a header from this rank (gloo: tags keep it apart from the
        data they may expect first), so they raise the same error instead of timing out; then raise.

        Stopped by a peer: take every header that peer still owes this rank (its sends then complete)
        and send it none back."""
        if not self.nccl:
            stopper = err.peer if isinstance(err, PipelineStoppedError) else None
            works = []
            for op in self._ops:
                msg = op.message
                if op.kind == "recv" and msg.header and msg.src == stopper and msg.index not in self._headers:
                    buf = header_buffer(self.device)
                    work = dist.irecv(buf, src=self._peer(msg.src), group=self.group, tag=msg.tag_header)
                    self._headers[msg.index] = (work, buf)
                if op.kind == "send" and msg.header and msg.index not in self._headers_sent and msg.dst != stopper:
                    self._headers_sent.add(msg.index)
                    buf = encode_header(str(err), f"stage {msg.producer[1]}", self.device)
                    works.append(dist.isend(buf, dst=self._peer(msg.dst), group=self.group, tag=msg.tag_header))
            deadline = time.monotonic() + self.timeout  # a gloo send completes once the peer takes it
            for work in works:
                with suppress(RuntimeError):  # that peer is gone or busy elsewhere: it times out or is stopped
                    work.wait(timeout=datetime.timedelta(seconds=max(0.01, deadline - time.monotonic())))
        raise err

    # ------------------------------------------------------------------ step

    def step(
        self, *inputs: Any, target: Any = None, losses: list[torch.Tensor] | None = None, **kwargs: Any
    ) -> torch.Tensor | None:
        """Run one training iteration; parameter .grad then hold the gradients of the mean loss.

        `inputs` and `kwargs` (stage 0's arguments) are needed on the rank
        holding stage 0 and `target` on the rank holding the last stage
        (passing them everywhere is fine). Tensors whose first dimension is
        the batch (that of the first tensor) are cut into the schedule's
        microbatches, which must divide it; other tensors and values go to
        every microbatch. Every tensor of `target` is cut. Shapes may change
        from step to step. `losses`, if given, gets each microbatch's loss
        appended (on the last stage's rank).
        """
        return self._run(inputs, kwargs, target, train=True, losses=losses)

    def eval_step(
        self, *inputs: Any, target: Any = None, losses: list[torch.Tensor] | None = None, **kwargs: Any
    ) -> EvalResult | None:
        """Forward passes only (each rank's F actions in its schedule order), under torch.no_grad.

        Arguments as for `step`. On the last stage's rank: the mean loss (if
        `target` is given, or loss_fn is None) and the last stage's outputs,
        merged over the microbatches (payload.merge); None elsewhere.
        """
        with torch.no_grad():
            loss = self._run(inputs, kwargs, target, train=False, losses=losses)
        if self.last_stage not in self.modules:
            return None
        return EvalResult(loss, self.last_outputs)

    def _run(self, inputs: tuple, kwargs: dict, target: Any, train: bool, losses: list | None) -> torch.Tensor | None:
        m = self.problem.microbatches
        self._ops = self._train_ops if train else self._eval_ops
        self._train = train
        self._next = 0
        self._outbox: dict[int, list[torch.Tensor]] = {}
        self._sending: list[tuple[dist.Work, torch.Tensor, Message]] = []
        self._receiving: dict[int, tuple[list[dist.Work], list[torch.Tensor]]] = {}
        self._headers: dict[int, tuple[dist.Work, torch.Tensor]] = {}
        self._headers_read: set[int] = set()
        self._headers_sent: set[int] = set()
        self._first_header = {(o.message.kind, o.message.boundary): o.message for o in self._ops if o.message.header}
        self._layouts_in: dict[int, Layout] = {}  # boundary -> the layout of what crosses it this step
        self._layouts_out: dict[int, Layout] = {}  # stage of this rank -> the layout of its output this step
        self._handover: dict[PassKey, tuple[Layout, list[torch.Tensor]]] = {}
        self._inputs: dict[tuple[int, int], list[torch.Tensor]] = {}
        self._outputs: dict[tuple[int, int], list] = {}
        self._w_tasks: dict[tuple[int, int], tuple[list[WeightGradTask], WeightBranches | None]] = {}
        self._losses: list[torch.Tensor] = []
        self._kept: list[Any] = []
        self._forwards_seen: dict[int, int] = {}
        self._first_saved: dict[int, int] = {}
        self._probe: dict[int, int] = {}  # stage -> the microbatch whose bytes are measured
        try:
            self._in_chunks = self._input_chunks(inputs, kwargs)
            self._target_chunks = self._target_split(target)
        except PipelineError as err:
            self._fail(err)
        track = self.meter is not None and train
        if track:
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
        base_level = self.meter.level if track else 0

        run = {"F": self._forward, "B": self._backward, "W": self._weight}
        try:
            self._post()
            for position, action in enumerate(self.actions):
                if not train and action.op != "F":
                    continue
                run[action.op](action)
                self._post()  # first thing after a pass: its output goes on the wire before any bookkeeping
                self._reap_sends(finished_only=True)
                if train and self.grads_ready is not None and self._last_pass[action.stage] == position:
                    self.grads_ready(action.stage, self.modules[action.stage])
        except PipelineTimeoutError:
            raise
        except PipelineError as err:
            self._fail(err)
        self._reap_sends(finished_only=False)

        loss = torch.stack(self._losses).sum() / m if self._losses else None
        if losses is not None:
            losses.extend(self._losses)
        self.last_outputs = merge(self._kept) if self._kept else None
        if self.broadcast_loss:
            loss = self._broadcast(loss)
        if cuda:
            torch.cuda.synchronize(self.device)  # NCCL: every transfer of the step has completed now
            self._reap_sends(finished_only=True)  # so their buffers go
        if train:
            self.stats = StepStats(
                seconds=time.perf_counter() - start,
                peak_bytes=self.meter.peak - base_level if track else 0,
                cuda_peak_bytes=torch.cuda.max_memory_allocated(self.device) - cuda_base if cuda else None,
            )
        if train and loss is not None and not math.isfinite(loss.item()):
            bad = [j for j, v in enumerate(self._losses) if not math.isfinite(v.item())]
            where = f"microbatches {bad}" if bad else "another rank's microbatches"
            raise NonFiniteLossError(f"rank {self.rank}: the loss is {loss.item()} ({where}); gradients not usable")
        return loss

    def _input_chunks(self, inputs: tuple, kwargs: dict) -> list[tuple[tuple, dict]]:
        """Stage 0's arguments per microbatch (empty off stage 0's rank)."""
        if 0 not in self.modules:
            return []
        if not inputs and not kwargs:
            raise PipelineError(f"rank {self.rank}: holds stage 0, so step() needs its inputs")
        m = self.problem.microbatches
        batch = first_batch_size(inputs, kwargs)
        where = f"rank {self.rank}, stage 0"
        args = [split_batch(v, batch, m, self.device, f"{where}: input {i}") for i, v in enumerate(inputs)]
        kws = {k: split_batch(v, batch, m, self.device, f"{where}: keyword input {k!r}") for k, v in kwargs.items()}
        return [(tuple(a[j] for a in args), {k: v[j] for k, v in kws.items()}) for j in range(m)]

    def _target_split(self, target: Any) -> list[Any]:
        """The target per microbatch on the last stage's rank (every tensor cut; None: no target)."""
        m = self.problem.microbatches
        if self.last_stage not in self.modules or target is None:
            return [None] * m
        return split_batch(target, None, m, self.device, f"rank {self.rank}, stage {self.last_stage}: target")

    def _broadcast(self, loss: torch.Tensor | None) -> torch.Tensor:
        src = self.problem.placement[self.last_stage]
        value = loss if loss is not None else torch.empty((), dtype=torch.float64, device=self.device)
        value = value.to(torch.float64).to(self.device)
        dist.broadcast(value, src=self._peer(src), group=self.group)
        return value

    def _params(self) -> list[torch.Tensor]:
        return [p for mod in self.modules.values() for p in mod.parameters()]

    def _stage_inputs(self, action: Action) -> tuple[tuple, dict, list[torch.Tensor]]:
        """The stage's arguments for this microbatch and the input tensors whose gradient B computes."""
        s, j = action.stage, action.mb
        if s == 0:
            args, kwargs = self._in_chunks[j]
            if not (self._train and s in self._graph_split):
                return args, kwargs, []
            # Stage 0's inputs need no gradient, but the graph split needs an input path to split along.
            leaves: list[torch.Tensor] = []

            def leaf(t: torch.Tensor) -> torch.Tensor:
                if not t.is_floating_point():
                    return t
                leaves.append(t.detach().requires_grad_(True))
                return leaves[-1]

            args = tuple(leaf(a) if isinstance(a, torch.Tensor) else a for a in args)
            kwargs = {k: leaf(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            return args, kwargs, leaves
        layout, tensors = self._take(("F", s, j), action)
        leaves = []
        if self._train:
            tensors = list(tensors)
            for i in layout.grad_indices:
                tensors[i] = tensors[i].detach().requires_grad_(True)
                leaves.append(tensors[i])
        value = unflatten(layout, tensors)
        if isinstance(value, dict):
            return (), value, leaves
        return (tuple(value) if isinstance(value, (tuple, list)) else (value,)), {}, leaves

    def _forward(self, action: Action) -> None:
        s, j = action.stage, action.mb
        args, kwargs, leaves = self._stage_inputs(action)
        last = s == self.last_stage
        track = self.meter is not None and self._train
        with self.meter.saving() if track else nullcontext():
            before = self.meter.level if track else 0
            out = self.modules[s](*args, **kwargs)
            if last:
                loss = self._loss(out, self._target_chunks[j], s)
        if track:
            self._measure_forward(s, j, self.meter.level - before)
        if last:
            if self.keep_outputs or not self._train:
                self._kept.append(_detached(out))
            if loss is not None:
                self._losses.append(loss.detach())
            if self._train:
                self._inputs[(s, j)] = leaves
                if loss is not None and loss.requires_grad:
                    scaled = loss / self.problem.microbatches
                    self._outputs[(s, j)] = [self.scaler.scale(scaled) if self.scaler is not None else scaled]
            return
        tensors, layout = flatten(out, f"rank {self.rank}, stage {s}")
        known = self._layouts_out.setdefault(s, layout)
        if known != layout:
            raise PipelineError(
                f"rank {self.rank}, stage {s}, microbatch {j}: its output {_describe(layout)} differs from the "
                f"step's first microbatch's {_describe(known)}; every microbatch of a step must have the same shapes"
            )
        if self._train:
            self._outputs[(s, j)] = [get_gradient_edge(tensors[i]) for i in layout.grad_indices]
            self._inputs[(s, j)] = leaves
        self._give(("F", s, j), ("F", s + 1, j), layout, [t.detach() for t in tensors])

    def _loss(self, out: Any, target: Any, stage: int) -> torch.Tensor | None:
        if self.loss_fn is None:
            loss = out
        elif target is None:
            if not self._train:
                return None  # evaluation without a target: outputs only
            loss = self.loss_fn(out)
        else:
            loss = self.loss_fn(out, target)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            what = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise PipelineError(f"rank {self.rank}, stage {stage}: the loss must be a scalar tensor, got {what}")
        return loss.reshape(())

    def _backward(self, action: Action) -> None:
        s, j = action.stage, action.mb
        grads = None if s == self.last_stage else self._take(("B", s, j), action)[1]
        outs = self._outputs.pop((s, j), [])
        xs = self._inputs.pop((s, j), [])
        before = self.meter.level if self.meter else 0
        if outs and self.problem.split_backward:
            params = self._graph_split.get(s)
            self._w_tasks[(s, j)] = input_backward(outs, grads, xs, params, self.meter.hold if self.meter else None)
        elif outs:
            torch.autograd.backward(outs, grads)
        del outs, grads
        if self.meter and self._probe.get(s) == j:
            act = self._stage_bytes[s][0]
            self._stage_bytes[s] = (act, act + self.meter.level - before)
        if s > 0:
            gx = [x.grad if x.grad is not None else torch.zeros_like(x) for x in xs]
            self._give(("B", s, j), ("B", s - 1, j), None, gx)

    def _weight(self, action: Action) -> None:
        weight_backward(*self._w_tasks.pop((action.stage, action.mb), ([], None)))

    # ---------------------------------------------------------------- memory

    def _measure_forward(self, stage: int, mb: int, saved: int) -> None:
        """Bytes one microbatch saves, from the stage's second F of the step (its first when m = 1).

        The first F may also save what later ones share (under autocast, the
        cast copies of the weights from autocast's cache): counted once per
        storage, the difference is the stage's shared bytes, held all step.
        """
        seen = self._forwards_seen.get(stage, 0)
        self._forwards_seen[stage] = seen + 1
        if seen == 0:
            self._first_saved[stage] = saved
        if seen == min(1, self.problem.microbatches - 1):
            self._probe[stage] = mb
            self._stage_bytes[stage] = (saved, 0)
            self._shared_bytes[stage] = max(0, self._first_saved[stage] - saved)

    def stage_bytes(self) -> dict[int, tuple[int, int]]:
        """Per stage of this rank, bytes one microbatch keeps after F and still keeps after B (last step)."""
        return dict(self._stage_bytes)

    def predicted_peak_bytes(self) -> float:
        """The schedule's peak for this rank: docs/design.md's memory walk of its list with profiled bytes.

        F adds the stage's activation; B releases activation - kept (fused:
        all of it); W releases kept. Profiled kept can exceed the activation
        (W holds output gradients that B creates), so B may add memory: the
        walk allows it, where a Problem would not. Plus each stage's shared
        bytes (saved once per step, e.g. autocast's weight copies), as if held
        all step: an upper bound.
        """
        if not self._stage_bytes:
            raise PipelineError(f"rank {self.rank}: run a step with track_memory=True before predicting memory")
        level = peak = 0
        for a in self.actions:
            act, kept = self._stage_bytes[a.stage]
            level += memory_change(a.op, act, kept, self.problem.split_backward)
            peak = max(peak, level)
        return float(peak + sum(self._shared_bytes.values()))


def device_of(modules: dict[int, nn.Module]) -> torch.device:
    """The device of the first parameter of the modules (CPU if they have none)."""
    for module in modules.values():
        for p in module.parameters():
            return p.device
    return torch.device("cpu")


def check_placement(schedule: Schedule, held: list[int], group: dist.ProcessGroup | None = None) -> None:
    """The same PipelineError on every rank unless each rank holds the stages the schedule places on it."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    problem = schedule.problem
    if world != problem.devices:
        raise PipelineError(f"rank {rank}: the schedule has {problem.devices} devices but the world has {world} ranks")
    everyone: list[list[int] | None] = [None] * world
    dist.all_gather_object(everyone, held, group=group)
    wrong = [r for r, stages in enumerate(everyone) if stages != problem.stages_on(r)]
    if not wrong:
        return
    r = wrong[0]
    stage = min(set(everyone[r] or []) ^ set(problem.stages_on(r)))
    given = {s: q for q, stages in enumerate(everyone) for s in stages or []}
    whole = sorted(given) == list(range(len(given))) and sum(len(st or []) for st in everyone) == len(given)
    given_kind = placement_kind([given[s] for s in range(len(given))], world) if whole else "no single"
    raise PipelineError(
        f"rank {rank}: stage {stage} does not sit where the schedule puts it: rank {r} was given modules for "
        f"stages {everyone[r]} ({given_kind} placement), but {schedule.name or 'the schedule'} places stages "
        f"{problem.stages_on(r)} on it ({placement_kind(problem.placement, world)} placement "
        f"{list(problem.placement)}, {problem.stages} stages)"
    )


@dataclass
class EvalResult:
    """What `eval_step` returns on the last stage's rank."""

    loss: torch.Tensor | None  # the mean microbatch loss; None without a target
    outputs: Any  # the last stage's outputs, merged over the microbatches


def _detached(value: Any) -> Any:
    """A stage output with every tensor detached (kept for the caller, without the graph)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _describe(layout: Layout) -> str:
    return "[" + ", ".join(f"{str(s.dtype).removeprefix('torch.')}{list(s.shape)}" for s in layout.specs) + "]"
