"""Interleaved 1F1B (Narayanan et al. 2021, Megatron-LM's virtual pipeline).

Each device holds `v` chunks (loop placement: stage s on device s mod D,
chunk c of device d is stage cD + d). Microbatches go through the chunks in
groups of D: forwards of microbatches 0..D-1 on chunk 0, then the same
microbatches on chunk 1, and so on; the last group takes the remainder.
Backwards walk the same table with the chunks reversed. Device d warms up
with 2(D-1-d) + (v-1)D forwards, as in Megatron, then alternates one
forward and one backward, then drains the backwards. With one chunk this
is exactly 1F1B.

Megatron requires m to be a multiple of D: when the last group is shorter
than D this order can deadlock (for instance D=4, v=3, m=5), and we say so
instead of writing a broken schedule. m <= D is one group and always runs.
"""

from __future__ import annotations

from pipesynth.construct import register
from pipesynth.core.problem import Op, Problem
from pipesynth.core.schedule import Schedule
from pipesynth.core.simulate import from_order
from pipesynth.errors import InvalidScheduleError, PipesynthError


def chunk_table(devices: int, microbatches: int, chunks: int) -> list[tuple[int, int]]:
    """(microbatch, chunk) in the order every device runs its forwards."""
    table = []
    for first in range(0, microbatches, devices):
        last = microbatches if first + devices >= microbatches else first + devices
        table += [(j, c) for c in range(chunks) for j in range(first, last)]
    return table


def interleaved_order(devices: int, microbatches: int, chunks: int) -> list[list[tuple[Op, int, int]]]:
    table = chunk_table(devices, microbatches, chunks)
    total = len(table)
    order = []
    for d in range(devices):
        forwards = [("F", c * devices + d, j) for j, c in table]
        backwards = [("B", (chunks - 1 - c) * devices + d, j) for j, c in table]
        warmup = devices - 1 - d if chunks == 1 else 2 * (devices - 1 - d) + (chunks - 1) * devices
        warmup = min(warmup, total)
        dev = forwards[:warmup]
        for k in range(total - warmup):
            dev += [forwards[warmup + k], backwards[k]]
        dev += backwards[total - warmup :]
        order.append(dev)
    return order


@register(
    "interleaved-1f1b",
    "1F1B over v chunks per device, Megatron-style warm-up (Narayanan et al. 2021)",
    "loop",
    split_backward=False,
)
def interleaved_1f1b(problem: Problem) -> Schedule:
    devices, stages = problem.devices, problem.stages
    chunks = stages // devices
    if stages != chunks * devices or any(problem.placement[s] != s % devices for s in range(stages)):
        raise PipesynthError("interleaved-1f1b: needs the loop placement (stage s on device s mod D)")
    m = problem.microbatches
    order = interleaved_order(devices, m, chunks)
    try:
        return from_order(problem, order, "interleaved-1f1b", chunks=chunks)
    except InvalidScheduleError:
        below, above = m // devices * devices, -(-m // devices) * devices
        raise PipesynthError(
            f"interleaved-1f1b: with {devices} devices and {chunks} chunks, {m} microbatches leave a last group"
            f" of {m % devices} < {devices} and Megatron's order deadlocks; use a multiple of {devices}"
            f" ({below} or {above}) or at most {devices}"
        ) from None
