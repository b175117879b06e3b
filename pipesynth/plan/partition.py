"""Layer partitions: which consecutive layers each stage runs, what that costs, and the best split.

The model is the list [embedding, decoder x L, head]; a partition gives each
stage a consecutive run of it, so the embedding always opens stage 0 and the
head closes the last stage, and a stage may hold only the embedding or only
the head. Decoder layers are alike, so a partition is the number of decoder
layers per stage.

`best_partition` minimises the busiest device's work per microbatch
(F + B + W summed over its stages) under a per-device memory estimate
(static bytes + each stage's activation times the number of microbatches a
schedule keeps alive on it). Devices only share the total layer count, so
for a bound on the work, each device's most layers follow from its own
stages (cheapest memory per layer first), and the smallest feasible bound is
found by bisection over the finitely many values a device's work can take:
exact for that objective (tests compare it with brute force over every split).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from pipesynth.core.problem import Problem, placement_for
from pipesynth.core.units import PROFILED
from pipesynth.errors import PipesynthError
from pipesynth.plan.costs import LayerCost, ModelCosts

#: Loop placements tried: stages per device.
LOOP_CHUNKS = (2, 4)


@dataclass(frozen=True)
class Layout:
    """A placement of stages on devices."""

    kind: str  # linear, loop, v
    chunks: int  # stages per device
    placement: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"loop x{self.chunks}" if self.kind == "loop" else self.kind


def layouts(devices: int, layers: int) -> list[Layout]:
    """Every placement whose stages can each hold at least one layer of the model."""
    out = [Layout("linear", 1, placement_for("linear", devices))]
    out += [Layout("loop", v, placement_for("loop", devices, v)) for v in LOOP_CHUNKS]
    out.append(Layout("v", 2, placement_for("v", devices)))
    return [lay for lay in out if len(lay.placement) <= layers + 2 and (devices > 1 or lay.kind == "linear")]


@dataclass(frozen=True)
class Partition:
    """Decoder layers per stage (the embedding opens stage 0, the head closes the last)."""

    layers: tuple[int, ...]

    @property
    def stages(self) -> int:
        return len(self.layers)

    def item_ranges(self) -> list[tuple[int, int]]:
        """Per stage, the half-open range [start, end) over [embedding, decoder x L, head]."""
        ranges, start = [], 0
        for s, count in enumerate(self.layers):
            end = start + count + (s == 0) + (s == self.stages - 1)
            ranges.append((start, end))
            start = end
        return ranges


def check_partition(partition: Partition, layers: int) -> None:
    """Every stage holds at least one item, and the counts cover the model's decoder layers."""
    counts = partition.layers
    if not counts:
        raise PipesynthError("partition: needs at least one stage")
    if any(c < 0 for c in counts) or sum(counts) != layers:
        raise PipesynthError(f"partition: {list(counts)} does not split the model's {layers} decoder layers")
    for s in range(1, len(counts) - 1):
        if counts[s] < 1:
            raise PipesynthError(
                f"partition: stage {s} holds no layer (only the first and last may hold just the embedding or the head)"
            )


def even_partition(layers: int, stages: int) -> Partition:
    """torchtitan's default split: the embedding and the head count as one layer each, spread evenly
    with the earlier stages taking the extra ones (`generate_llm_fqn_per_model_part`)."""
    items = layers + 2
    if stages < 1 or items < stages:
        raise PipesynthError(f"cannot split {layers} layers (+ embedding and head) into {stages} stages")
    base, extra = divmod(items, stages)
    counts = [base + (s < extra) for s in range(stages)]
    counts[0] -= 1
    counts[-1] -= 1
    if stages == 1:
        counts = [layers]
    return Partition(tuple(counts))


@dataclass(frozen=True)
class StageFigures:
    """Per stage, for one microbatch: times (us) and bytes."""

    forward: tuple[float, ...]
    backward: tuple[float, ...]
    weight: tuple[float, ...]
    after_f: tuple[float, ...]
    kept_for_w: tuple[float, ...]
    static: tuple[float, ...]

    def work(self, s: int) -> float:
        return self.forward[s] + self.backward[s] + self.weight[s]

    def activation(self, s: int, split_backward: bool) -> float:
        """The problem's activation: with a split backward the most held between F and W."""
        return max(self.after_f[s], self.kept_for_w[s]) if split_backward else self.after_f[s]


def stage_figures(costs: ModelCosts, partition: Partition) -> StageFigures:
    check_partition(partition, costs.layers)
    last = partition.stages - 1

    def total(field: str) -> tuple[float, ...]:
        out = []
        for s, count in enumerate(partition.layers):
            value = count * getattr(costs.decoder, field)
            value += getattr(costs.embedding, field) if s == 0 else 0.0
            value += getattr(costs.head, field) if s == last else 0.0
            out.append(value)
        return tuple(out)

    static = list(total("static"))
    static[0] -= costs.tied_bytes if last == 0 else 0.0
    return StageFigures(
        forward=total("forward"),
        backward=total("backward"),
        weight=total("weight"),
        after_f=total("activation"),
        kept_for_w=total("kept_for_w"),
        static=tuple(static),
    )


def device_static(costs: ModelCosts, figures: StageFigures, placement: Sequence[int], devices: int) -> list[float]:
    """Static bytes per device; tied embedding and head weights on one device are one tensor."""
    out = [0.0] * devices
    for s, d in enumerate(placement):
        out[d] += figures.static[s]
    last = len(placement) - 1
    if last > 0 and placement[0] == placement[last]:
        out[placement[0]] -= costs.tied_bytes
    return out


def stage_problem(
    costs: ModelCosts,
    partition: Partition,
    placement: Sequence[int],
    devices: int,
    microbatches: int,
    split_backward: bool,
    budget: float | None,
) -> Problem:
    """The scheduling problem of a partition: per-stage times and activations; each device's cap is
    the budget less its static bytes (None: no cap). Raises PipesynthError when the weights alone
    do not fit a device."""
    fig = stage_figures(costs, partition)
    stages = range(partition.stages)
    cap = None
    if budget is not None:
        static = device_static(costs, fig, placement, devices)
        cap = tuple(budget - x for x in static)
        for d, c in enumerate(cap):
            if c < 0:
                raise PipesynthError(f"device {d}: its weights, gradients and optimizer states exceed the budget")
    activation = tuple(fig.activation(s, split_backward) for s in stages)
    problem = Problem(
        devices=devices,
        microbatches=microbatches,
        placement=tuple(placement),
        cost_f=tuple(round(x, 1) for x in fig.forward),
        cost_b=tuple(round(fig.backward[s] + (0 if split_backward else fig.weight[s]), 1) for s in stages),
        cost_w=tuple(round(fig.weight[s], 1) if split_backward else 0.0 for s in stages),
        activation=activation,
        kept_for_w=tuple(fig.kept_for_w) if split_backward else activation,
        split_backward=split_backward,
        comm=round(costs.comm, 1),
        cap=cap,
        units=PROFILED,
    )
    return problem


@dataclass(frozen=True)
class _Device:
    """What one device's stages need: fixed work and memory, and per decoder layer."""

    stages: tuple[int, ...]
    fixed_work: float
    fixed_memory: float
    least: tuple[int, ...]  # fewest decoder layers per stage
    per_layer_memory: tuple[float, ...]  # bytes one more decoder layer adds on each stage


def _devices(
    costs: ModelCosts, placement: Sequence[int], devices: int, inflight: Sequence[int], split_backward: bool
) -> list[_Device]:
    stages = len(placement)
    last = stages - 1
    dec = costs.decoder

    def held(c: LayerCost) -> float:
        return max(c.activation, c.kept_for_w) if split_backward else c.activation

    out = []
    for d in range(devices):
        mine = tuple(s for s in range(stages) if placement[s] == d)
        work = memory = 0.0
        for s in mine:
            for c, present in ((costs.embedding, s == 0), (costs.head, s == last)):
                if present:
                    work += c.forward + c.backward + c.weight
                    memory += c.static + inflight[s] * held(c)
        if 0 in mine and last in mine and last > 0:
            memory -= costs.tied_bytes
        least = tuple(0 if s in (0, last) else 1 for s in mine)
        per_layer = tuple(dec.static + inflight[s] * held(dec) for s in mine)
        out.append(_Device(mine, work, memory, least, per_layer))
    return out


def _most_layers(dev: _Device, work_bound: float, layer_work: float, budget: float) -> int:
    """The most decoder layers `dev` can take with its work <= work_bound and memory <= budget; -1 if none."""
    least = sum(dev.least)
    room = budget - dev.fixed_memory - sum(n * c for n, c in zip(dev.least, dev.per_layer_memory))
    by_work = (work_bound - dev.fixed_work) / layer_work if layer_work > 0 else float("inf")
    if room < -1e-6 or by_work < least - 1e-9:
        return -1
    cheapest = min(dev.per_layer_memory)
    by_memory = room / cheapest if cheapest > 0 else float("inf")
    extra = min(by_work - least, by_memory)
    return least + int(min(extra, 1e9) + 1e-9)


def best_partition(
    costs: ModelCosts,
    placement: Sequence[int],
    devices: int,
    inflight: Sequence[int],
    split_backward: bool,
    budget: float,
) -> Partition | None:
    """The partition minimising the busiest device's work per microbatch whose memory estimate fits
    `budget` on every device (None when none does). `inflight[s]`: microbatches of stage s alive at once."""
    layers = costs.layers
    layer_work = costs.decoder.forward + costs.decoder.backward + costs.decoder.weight
    devs = _devices(costs, placement, devices, inflight, split_backward)
    if sum(sum(d.least) for d in devs) > layers:
        return None
    bounds = sorted({d.fixed_work + n * layer_work for d in devs for n in range(layers + 1)})

    def feasible(bound: float) -> bool:
        most = [_most_layers(d, bound + 1e-9, layer_work, budget) for d in devs]
        return min(most) >= 0 and sum(most) >= layers

    at = bisect.bisect_left(bounds, True, key=lambda b: feasible(b))
    if at == len(bounds):
        return None
    return _build(devs, bounds[at] + 1e-9, layer_work, budget, costs, len(placement))


def _build(
    devs: list[_Device], bound: float, layer_work: float, budget: float, costs: ModelCosts, stages: int
) -> Partition:
    """A partition within `bound`: layers per device lightest-first, then spread over each device's stages."""
    most = [_most_layers(d, bound, layer_work, budget) for d in devs]
    take = [sum(d.least) for d in devs]
    # Hand out the remaining layers one by one to the device whose work would stay lowest.
    for _ in range(costs.layers - sum(take)):
        d = min(
            (i for i in range(len(devs)) if take[i] < most[i]),
            key=lambda i: (devs[i].fixed_work + (take[i] + 1) * layer_work, i),
        )
        take[d] += 1
    counts = [0] * stages
    for dev, total in zip(devs, take):
        counts_here = _spread(dev, total, budget, costs, stages)
        for s, n in zip(dev.stages, counts_here):
            counts[s] = n
    return Partition(tuple(counts))


def _spread(dev: _Device, total: int, budget: float, costs: ModelCosts, stages: int) -> list[int]:
    """`total` layers over one device's stages: balanced stage work, within the device's memory."""
    counts = list(dev.least)
    room = budget - dev.fixed_memory - sum(n * c for n, c in zip(counts, dev.per_layer_memory))
    layer_work = costs.decoder.forward + costs.decoder.backward + costs.decoder.weight
    cheapest = min(dev.per_layer_memory)

    def stage_work(i: int, n: int) -> float:
        s = dev.stages[i]
        extra = costs.embedding.forward + costs.embedding.backward + costs.embedding.weight if s == 0 else 0.0
        extra += costs.head.forward + costs.head.backward + costs.head.weight if s == stages - 1 else 0.0
        return extra + n * layer_work

    for left in range(total - sum(counts) - 1, -1, -1):
        # A stage qualifies if the layers still to place fit afterwards in the cheapest stage.
        fits = [i for i, c in enumerate(dev.per_layer_memory) if c + left * cheapest <= room + 1e-6]
        fits = fits or [dev.per_layer_memory.index(cheapest)]
        i = min(fits, key=lambda i: (stage_work(i, counts[i] + 1), dev.per_layer_memory[i]))
        counts[i] += 1
        room -= dev.per_layer_memory[i]
    return counts
