"""The communication plan: which tensors cross ranks, and in what order each rank posts them.

Every cross-rank dependency of the schedule is one message: F of stage s
sends its output to F of stage s+1; B of stage s sends its input gradients
to B of stage s-1. A message holds any number of tensors (payload.py), one
P2P op each, in the order of the producing stage's flattened output; the
first message of each boundary and direction in a step carries a header
first (the output's layout, shapes and dtypes, or an error to raise), so
shapes may change from step to step. Stages next to each other on one rank
hand tensors over in memory instead.

Order (why this cannot deadlock): all ranks agree on one topological order
of every pass (Kahn's algorithm over data and device-order edges, ties
broken by simulated start time, then device and position). Each rank posts
its sends and receives in the order of their producing pass. For every pair
of ranks both sides therefore post that pair's messages in the same order
(which NCCL requires and gloo is happy with), and a rank only ever waits on
a message whose producer comes earlier in the global order, so by induction
over that order every wait is eventually satisfied.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import torch

from pipesynth.core.rules import PassKey, crosses_devices, dependencies, successors
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import simulate
from pipesynth.runtime.errors import PipelineError


@dataclass(frozen=True)
class Message:
    """One tensor sent from the rank running `producer` to the rank running `consumer`."""

    index: int  # position of the producer in the global order: the same on every rank (the gloo tag)
    kind: Literal["activation", "gradient"]
    producer: PassKey
    consumer: PassKey
    src: int
    dst: int
    header: bool = False  # the first message of its boundary and direction: a header goes first

    @property
    def boundary(self) -> int:
        """The stage boundary crossed: s for the one between stages s and s+1."""
        return min(self.producer[1], self.consumer[1])

    def tag(self, tensor: int) -> int:
        """The gloo tag of the message's `tensor`-th tensor (HEADER_TAG for its header): unique per step."""
        if tensor >= HEADER_TAG:
            raise PipelineError(f"the {self} holds more than {HEADER_TAG - 1} tensors")
        return (self.index << 8) | tensor

    @property
    def tag_header(self) -> int:
        return (self.index << 8) | HEADER_TAG

    def __str__(self) -> str:
        what = "activation" if self.kind == "activation" else "input gradient"
        return f"{what} of stage {self.producer[1]} microbatch {self.producer[2]}"


@dataclass(frozen=True)
class CommOp:
    """A send or a receive, as one rank posts it."""

    kind: Literal["send", "recv"]
    message: Message

    @property
    def peer(self) -> int:
        return self.message.dst if self.kind == "send" else self.message.src


def global_order(schedule: Schedule) -> list[PassKey]:
    """A topological order of all passes that every rank computes identically."""
    problem = schedule.problem
    sim = simulate(schedule)
    where: dict[PassKey, tuple[float, int, int]] = {}
    for d, dev in enumerate(schedule.actions):
        for pos, a in enumerate(dev):
            where[a.key] = (sim.start[d][pos], d, pos)
    successors: dict[PassKey, list[PassKey]] = {k: [] for k in where}
    waiting = dict.fromkeys(where, 0)
    for key in where:
        for dep in dependencies(problem, *key):
            successors[dep].append(key)
            waiting[key] += 1
    for dev in schedule.actions:
        for a, b in zip(dev, dev[1:]):
            successors[a.key].append(b.key)
            waiting[b.key] += 1
    heap = [(where[k], k) for k, w in waiting.items() if w == 0]
    heapq.heapify(heap)
    order: list[PassKey] = []
    while heap:
        _, key = heapq.heappop(heap)
        order.append(key)
        for nxt in successors[key]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(heap, (where[nxt], nxt))
    return order


HEADER_TAG = 255  # the low byte of a message's tag: tensors 0..254, then the header


def messages(schedule: Schedule) -> list[Message]:
    """Every cross-rank message, in the global order of their producers; the first of each boundary
    and direction is marked to carry the step's header."""
    problem = schedule.problem
    place = problem.placement
    out: list[Message] = []
    seen: set[tuple[str, int]] = set()
    for i, (op, s, j) in enumerate(global_order(schedule)):
        for nop, ns, _ in successors(problem, op, s, j):  # a cross-device dependency is a message
            if crosses_devices(problem, s, ns):
                kind = "activation" if op == "F" else "gradient"
                first = (kind, min(s, ns)) not in seen
                seen.add((kind, min(s, ns)))
                out.append(Message(i, kind, (op, s, j), (nop, ns, j), place[s], place[ns], first))
    return out


def rank_ops(msgs: list[Message], rank: int, forward_only: bool = False) -> list[CommOp]:
    """This rank's sends and receives, in the order it posts them (activations only if `forward_only`:
    an evaluation step, which runs the F passes alone)."""
    ops: list[CommOp] = []
    for msg in msgs:
        if forward_only and msg.kind != "activation":
            continue
        if msg.src == rank:
            ops.append(CommOp("send", msg))
        elif msg.dst == rank:
            ops.append(CommOp("recv", msg))
    return ops


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of a tensor that crosses a stage boundary (the profiler times its P2P latency)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
