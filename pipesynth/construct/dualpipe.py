"""DualPipeV (DeepSeek's DualPipe cut in half onto a V), written afresh from its published order.

Device i holds chunk 0 (stage i) and chunk 1 (stage 2D-1-i), as in ZB-V.
Its list follows DeepSeek's `dualpipev.py` and torch's `ScheduleDualPipeV`
step by step (needs m >= 2D, as both do):

1. 2(D-1-i) chunk-0 F's;  2. i+1 pairs F0 F1;
3. D-1-i times: B1 (its W deferred), one deferred W, F1;
4. m-2D+i+1 times: F0 with B1, then F1 with B0;
5. D-1-i times: B1, then F1 with B0;
6. i+1 pairs B1 B0, the W's deferred from the middle pair on;
7. D-1-i times: one deferred W, B0 (W deferred);  8. the deferred W's.

A backward that is not deferred is a full backward: its W runs right after
its B. DualPipe overlaps each "F with B" pair (one chunk's forward with
the other chunk's backward, computing while the other communicates); the
rules of docs/design.md section 2 have no overlap, so the pair is modelled
as the two passes back to back: the F, then the full backward (B, W).
"""

from __future__ import annotations

from collections import deque

from pipesynth.construct import register
from pipesynth.construct.vshape import check_v
from pipesynth.core.problem import Op, Problem
from pipesynth.core.rules import PassKey
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order
from pipesynth.errors import PipesynthError


class DeviceList:
    """One device's list as DualPipeV builds it: microbatch counters per (pass, chunk) and deferred W's."""

    def __init__(self, stages: tuple[int, int]) -> None:
        self.stages = stages
        self.next_mb = {(op, c): 0 for op in "FB" for c in (0, 1)}
        self.deferred: deque[PassKey] = deque()
        self.order: list[PassKey] = []

    def add(self, op: Op, chunk: int) -> int:
        mb = self.next_mb[(op, chunk)]
        self.next_mb[(op, chunk)] += 1
        self.order.append((op, self.stages[chunk], mb))
        return mb

    def forward(self, chunk: int) -> None:
        self.add("F", chunk)

    def backward(self, chunk: int, defer_w: bool = False) -> None:
        """B of the chunk's next microbatch; its W right after (a full backward) or deferred (zero bubble)."""
        w = ("W", self.stages[chunk], self.add("B", chunk))
        if defer_w:
            self.deferred.append(w)
        else:
            self.order.append(w)

    def forward_with_backward(self, forward_chunk: int) -> None:
        """DualPipe's overlapped pair, back to back: F of one chunk, full backward of the other."""
        self.forward(forward_chunk)
        self.backward(1 - forward_chunk)

    def deferred_w(self) -> None:
        if self.deferred:
            self.order.append(self.deferred.popleft())


def dualpipev_order(d: int, m: int, i: int) -> list[PassKey]:
    """Device i's list (module doc's steps 1 to 8)."""
    dev = DeviceList((i, 2 * d - 1 - i))
    below = d - 1 - i  # devices after this one
    for _ in range(2 * below):
        dev.forward(0)
    for _ in range(i + 1):
        dev.forward(0)
        dev.forward(1)
    for _ in range(below):
        dev.backward(1, defer_w=True)
        dev.deferred_w()
        dev.forward(1)
    for _ in range(m - 2 * d + i + 1):
        dev.forward_with_backward(0)
        dev.forward_with_backward(1)
    for _ in range(below):
        dev.backward(1)
        dev.forward_with_backward(1)
    half = (i + 1) // 2
    for k in range(i + 1):
        # from the middle pair on the W's wait; an odd device starts deferring at the pair's B1
        dev.backward(1, defer_w=k > half or (k == half and i % 2 == 1))
        dev.backward(0, defer_w=k >= half)
    for _ in range(below):
        dev.deferred_w()
        dev.backward(0, defer_w=True)
    for _ in range(i + 1):
        dev.deferred_w()
    return dev.order


@register("dualpipev", "DeepSeek's DualPipeV: DualPipe cut in half onto a V, F&B pairs run back to back", "v")
def dualpipev(problem: Problem) -> Schedule:
    d = check_v(problem, "dualpipev")
    m = problem.microbatches
    if m < 2 * d:
        raise PipesynthError(f"dualpipev: microbatches must be at least 2 x devices = {2 * d}, got {m}")
    return from_order(problem, [dualpipev_order(d, m, i) for i in range(d)], "dualpipev")
