"""The planning problem: devices, microbatches, stage placement, costs, memory.

Every per-stage quantity is stored as a tuple with one entry per stage, so the
rest of the code never has to care whether the user gave a scalar or a list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

from pipesynth.core.units import Units, parse_bytes
from pipesynth.errors import PipesynthError

Op = Literal["F", "B", "W"]
OPS: tuple[Op, ...] = ("F", "B", "W")
PLACEMENTS = ("linear", "loop", "v")

Number = int | float
PerStage = Number | Sequence[Number]

#: Largest cost, comm, activation or cap: sums over every pass of the largest problem stay finite
#: and exact to well below one unit (1e15 us is 31 years; 1e15 bytes a petabyte).
MAX_VALUE = 1e15
#: Most passes (stages x microbatches x passes per microbatch) one problem may have.
MAX_PASSES = 10_000_000
#: Most stages: every stage runs at least F and B of one microbatch.
MAX_STAGES = MAX_PASSES // 2


@dataclass(frozen=True)
class Problem:
    """One pipeline-training iteration to schedule (docs/design.md sections 1 and 5).

    `cost_b` is the input-gradient pass when `split_backward` is true and the
    whole backward otherwise (then `cost_w` is all zeros and no W pass exists).
    `cap` is a per-device memory cap, or None for no cap. `units` says what
    the numbers mean when they are measured (see pipesynth.core.units); None for
    the abstract units of the generators.
    """

    devices: int
    microbatches: int
    placement: tuple[int, ...]
    cost_f: tuple[float, ...]
    cost_b: tuple[float, ...]
    cost_w: tuple[float, ...]
    activation: tuple[float, ...]
    kept_for_w: tuple[float, ...]
    split_backward: bool = True
    comm: float = 0.0
    cap: tuple[float, ...] | None = None
    units: Units | None = None

    def __post_init__(self) -> None:
        check_problem(self)

    @property
    def stages(self) -> int:
        return len(self.placement)

    @property
    def ops(self) -> tuple[Op, ...]:
        """The passes every (stage, microbatch) runs."""
        return OPS if self.split_backward else ("F", "B")

    def cost(self, op: Op, stage: int) -> float:
        return {"F": self.cost_f, "B": self.cost_b, "W": self.cost_w}[op][stage]

    def stages_on(self, device: int) -> list[int]:
        return list(self._stages_by_device.get(device, ()))

    @cached_property
    def _stages_by_device(self) -> dict[int, tuple[int, ...]]:
        """Device -> its stages in order, built once: per-device loops stay linear in the stages."""
        by_device: dict[int, list[int]] = {}
        for s, d in enumerate(self.placement):
            by_device.setdefault(d, []).append(s)
        return {d: tuple(stages) for d, stages in by_device.items()}

    def device_activation(self, device: int) -> float:
        """Activation one microbatch leaves on `device` across all its stages."""
        return sum(self.activation[s] for s in self.stages_on(device))

    def total_work(self) -> float:
        per_mb = sum(self.cost_f) + sum(self.cost_b) + sum(self.cost_w)
        return per_mb * self.microbatches

    def work_lower_bound(self) -> float:
        """No device can finish before it has run all of its own passes."""
        return max(
            self.microbatches * sum(self.cost_f[s] + self.cost_b[s] + self.cost_w[s] for s in self.stages_on(d))
            for d in range(self.devices)
        )

    def fused(self) -> Problem:
        """The same problem with B and W fused into one backward pass."""
        if not self.split_backward:
            return self
        cost_b = tuple(b + w for b, w in zip(self.cost_b, self.cost_w))
        zeros = tuple(0.0 for _ in self.placement)
        return replace(self, split_backward=False, cost_b=cost_b, cost_w=zeros)

    def with_cap(self, cap: tuple[float, ...] | None) -> Problem:
        return replace(self, cap=cap)


def placement_for(kind: str, devices: int, chunks: int = 1) -> tuple[int, ...]:
    """Stage -> device for a named placement (docs/design.md section 1)."""
    if devices < 1:
        raise PipesynthError(f"devices: must be at least 1, got {devices}")
    if devices * max(chunks if kind == "loop" else 2 if kind == "v" else 1, 1) > MAX_STAGES:
        raise PipesynthError(f"devices: {devices} is more than pipesynth plans for (at most {MAX_STAGES} stages)")
    if kind == "linear":
        return tuple(range(devices))
    if kind == "loop":
        if chunks < 1:
            raise PipesynthError(f"chunks: must be at least 1, got {chunks}")
        return tuple(s % devices for s in range(chunks * devices))
    if kind == "v":
        return tuple(s if s < devices else 2 * devices - 1 - s for s in range(2 * devices))
    raise PipesynthError(f"placement: unknown kind {kind!r}; expected one of {', '.join(PLACEMENTS)}")


def placement_kind(placement: Sequence[int], devices: int) -> str:
    """The name of a stage -> device list (linear, loop, v), or "custom" when it is none of them."""
    stages = len(placement)
    for kind in PLACEMENTS:
        chunks = max(1, stages // max(devices, 1))
        if tuple(placement) == placement_for(kind, devices, chunks):
            return kind
    return "custom"


def per_stage(value: PerStage, count: int, field: str, per: str = "stage") -> tuple[float, ...]:
    """Broadcast a scalar to every stage (or device), or check a list has one finite number each."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return tuple(_finite(value, field) for _ in range(count))
    if not isinstance(value, list | tuple):
        raise PipesynthError(f"{field}: expected a number or a list of {count} numbers, got {value!r}")
    if len(value) != count:
        raise PipesynthError(f"{field}: expected {count} values (one per {per}), got {len(value)}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise PipesynthError(f"{field}[{i}]: expected a number, got {v!r}")
    return tuple(_finite(v, f"{field}[{i}]") for i, v in enumerate(value))


def _finite(value: Number, field: str) -> float:
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        raise PipesynthError(f"{field}: {value:.3g} is out of range (at most {MAX_VALUE:g})") from None
    if not math.isfinite(number):
        raise PipesynthError(f"{field}: expected a finite number, got {value!r}")
    return number


def make_problem(
    devices: int,
    microbatches: int,
    placement: str | Sequence[int] = "linear",
    *,
    chunks: int = 1,
    cost: dict[str, PerStage] | None = None,
    comm: float = 0.0,
    activation: PerStage = 1.0,
    kept_for_w: PerStage | None = None,
    split_backward: bool = True,
    cap: Number | Sequence[Number] | None = None,
) -> Problem:
    """Build a Problem from friendly arguments: scalars broadcast to every stage.

    `cost` maps F, B, W to a number or a per-stage list (default 1 each). With
    `split_backward=False` the backward costs B + W, as in docs/design.md section 5.
    """
    stage_devices = placement_for(placement, devices, chunks) if isinstance(placement, str) else tuple(placement)
    stages = len(stage_devices)
    check_size(devices, microbatches, stages, len(OPS) if split_backward else 2)
    cost = {"F": 1.0, "B": 1.0, "W": 1.0, **(cost or {})}
    unknown = set(cost) - set(OPS)
    if unknown:
        raise PipesynthError(f"cost: unknown pass {sorted(unknown)[0]!r}; expected F, B or W")
    act = per_stage(activation, stages, "memory.activation")
    problem = Problem(
        devices=devices,
        microbatches=microbatches,
        placement=stage_devices,
        cost_f=per_stage(cost["F"], stages, "cost.F"),
        cost_b=per_stage(cost["B"], stages, "cost.B"),
        cost_w=per_stage(cost["W"], stages, "cost.W"),
        activation=act,
        kept_for_w=act if kept_for_w is None else per_stage(kept_for_w, stages, "memory.kept_for_w"),
        comm=float(comm),
        cap=None if cap is None else per_device_cap(cap, devices),
    )
    return problem if split_backward else problem.fused()


def per_device_cap(cap: Number | Sequence[Number], devices: int) -> tuple[float, ...]:
    return per_stage(cap, devices, "memory.cap", per="device")


def one_f_one_b_peak(problem: Problem) -> tuple[float, ...]:
    """Per-device peak memory of 1F1B on the same model (the base of relative caps).

    1F1B holds min(m, D) microbatches of a device's whole activation on its
    first device; docs/design.md section 2 takes that as the reference for every
    device, each with its own activation per microbatch.
    """
    held = min(problem.microbatches, problem.devices)
    return tuple(held * problem.device_activation(d) for d in range(problem.devices))


def parse_cap(spec: str | Number | Sequence[Number] | None, problem: Problem) -> tuple[float, ...] | None:
    """A cap given as units ("6", [6, 6, 4, 4], "6:6:4:4"), bytes ("12GiB", "8GiB:8GiB") or relative ("0.5x").

    Byte sizes need a problem whose memory is in bytes (`units`), such as a
    profiled one; a plain number is always in the problem's own units.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        return per_device_cap(spec, problem.devices)
    text = spec.strip().lower()
    if text.endswith("x"):
        try:
            factor = float(text[:-1])
        except ValueError:
            raise PipesynthError(
                f"memory: cannot read {spec!r}; give units (e.g. 6), bytes (e.g. 12GiB) "
                "or a multiple of 1F1B's peak (e.g. 0.5x)"
            ) from None
        return tuple(factor * peak for peak in one_f_one_b_peak(problem))
    values = [_cap_value(part, spec, problem) for part in text.split(":")]
    return per_device_cap(values[0] if len(values) == 1 else values, problem.devices)


def _cap_value(part: str, spec: str, problem: Problem) -> float:
    size = parse_bytes(part)
    if size is not None:
        if problem.units is None or not problem.units.bytes:
            raise PipesynthError(
                f"memory: {spec!r} is a byte size, but this problem's memory is not in bytes "
                '(a profiled problem says "units": {"memory": "bytes"}); give a number in its units or 0.5x'
            )
        return size
    try:
        return float(part)
    except ValueError:
        raise PipesynthError(
            f"memory: cannot read {spec!r}; give units (e.g. 6), bytes (e.g. 12GiB) "
            "or a multiple of 1F1B's peak (e.g. 0.5x)"
        ) from None


def check_size(devices: int, microbatches: int, stages: int, passes_per_microbatch: int) -> None:
    """Refuse counts beyond what pipesynth plans for, before anything is built for them.

    Every device holds a stage, so there are at most as many devices as
    stages; the passes of all stages and microbatches are bounded by
    MAX_PASSES, so no hostile count can make a check or a simulation run for
    minutes or fill memory.
    """
    if devices < 1:
        raise PipesynthError(f"devices: must be at least 1, got {devices}")
    if microbatches < 1:
        raise PipesynthError(f"microbatches: must be at least 1, got {microbatches}")
    if stages < 1:
        raise PipesynthError("placement: must list at least one stage")
    if devices > stages:
        raise PipesynthError(f"placement: device {stages} holds no stage ({devices} devices, {stages} stages)")
    passes = stages * microbatches * passes_per_microbatch
    if passes > MAX_PASSES:
        raise PipesynthError(
            f"microbatches: {stages} stages x {microbatches} microbatches make {passes} passes; "
            f"pipesynth plans at most {MAX_PASSES}"
        )


def check_problem(problem: Problem) -> None:
    """Reject inconsistent problems with a message naming the field at fault (linear time)."""
    p = problem
    check_size(p.devices, p.microbatches, p.stages, len(p.ops))
    for s, d in enumerate(p.placement):
        if not 0 <= d < p.devices:
            raise PipesynthError(f"placement[{s}]: device {d} is out of range 0..{p.devices - 1}")
    held = set(p.placement)
    if len(held) < p.devices:
        idle = next(d for d in range(p.devices) if d not in held)
        raise PipesynthError(f"placement: device {idle} holds no stage")
    fields = {
        "cost.F": p.cost_f,
        "cost.B": p.cost_b,
        "cost.W": p.cost_w,
        "memory.activation": p.activation,
        "memory.kept_for_w": p.kept_for_w,
    }
    for name, values in fields.items():
        if len(values) != p.stages:
            raise PipesynthError(f"{name}: expected {p.stages} values (one per stage), got {len(values)}")
        for s, v in enumerate(values):
            check_value(v, f"{name}[{s}]")
    for s, (act, kept) in enumerate(zip(p.activation, p.kept_for_w)):
        if kept > act:
            raise PipesynthError(f"memory.kept_for_w[{s}]: {kept:g} exceeds the activation {act:g}")
    check_value(p.comm, "comm")
    if p.cap is not None:
        if len(p.cap) != p.devices:
            raise PipesynthError(f"memory.cap: expected {p.devices} values (one per device), got {len(p.cap)}")
        for d, c in enumerate(p.cap):
            check_value(c, f"memory.cap[{d}]")


def check_value(value: float, field: str) -> None:
    """A cost, comm, activation or cap (or a plan's bytes and times): a finite number from 0 to MAX_VALUE."""
    if not math.isfinite(value):
        raise PipesynthError(f"{field}: expected a finite number, got {value!r}")
    if value < 0:
        raise PipesynthError(f"{field}: must be non-negative, got {value:g}")
    if value > MAX_VALUE:
        raise PipesynthError(f"{field}: {value:g} is out of range (at most {MAX_VALUE:g})")
