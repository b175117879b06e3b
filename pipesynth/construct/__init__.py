"""Handcrafted schedule generators, looked up by name (`pipesynth list`).

A generator turns a Problem (whose placement and backward mode it chose,
see `Generator.placement`) into a timed Schedule. `generate` builds that
problem from friendly arguments, so the CLI, the pareto table and tests all
call generators the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipesynth.core.problem import Number, PerStage, Problem, make_problem, parse_cap
from pipesynth.core.schedule import Schedule
from pipesynth.errors import PipesynthError


@dataclass(frozen=True)
class Generator:
    """A named schedule family: its placement, backward mode and builder."""

    name: str
    summary: str
    placement: str  # "linear", "loop" (chunks per device) or "v"
    split_backward: bool
    build: Callable[[Problem], Schedule]


GENERATORS: dict[str, Generator] = {}


def register(name: str, summary: str, placement: str, split_backward: bool = True):
    """Decorator: make `build(problem) -> Schedule` available under `name`."""

    def wrap(build: Callable[[Problem], Schedule]) -> Callable[[Problem], Schedule]:
        GENERATORS[name] = Generator(name, summary, placement, split_backward, build)
        return build

    return wrap


#: torch.distributed.pipelining's schedule classes -> our generator building the same schedule
#: (placement included). They are accepted wherever a generator name is; adding one is one line.
TORCH_NAMES: dict[str, str] = {
    "ScheduleGPipe": "gpipe",
    "Schedule1F1B": "1f1b",
    "ScheduleInterleaved1F1B": "interleaved-1f1b",
    "ScheduleZBVZeroBubble": "zb-v",
    "ScheduleDualPipeV": "dualpipev",
}
#: torch's classes with no twin here -> what to use instead.
TORCH_WITHOUT_TWIN: dict[str, str] = {
    "ScheduleLoopedBFS": "interleaved-1f1b (the same placement, depth-first) or `pipesynth solve --placement loop`",
    "ScheduleInterleavedZeroBubble": "zb-h1, zb-v, or `pipesynth solve --placement loop` (split backward)",
}


def canonical_name(name: str) -> str:
    """Our generator name for `name`, which may also be one of torch's class names (any case)."""
    for torch_name, ours in TORCH_NAMES.items():
        if torch_name.lower() == name.lower():
            if ours not in GENERATORS:
                raise PipesynthError(f"schedule: {torch_name} is torch's name for {ours}, which this version lacks")
            return ours
    for torch_name, instead in TORCH_WITHOUT_TWIN.items():
        if torch_name.lower() == name.lower():
            raise PipesynthError(f"schedule: torch's {torch_name} has no generator here; use {instead}")
    return name


def get_generator(name: str) -> Generator:
    """The generator called `name` (ours, or torch's class name for it)."""
    try:
        return GENERATORS[canonical_name(name)]
    except KeyError:
        known = ", ".join(sorted(GENERATORS))
        raise PipesynthError(
            f"schedule: unknown generator {name!r}; available: {known} (or torch's names, e.g. Schedule1F1B)"
        ) from None


def problem_for(
    name: str,
    devices: int,
    microbatches: int,
    *,
    chunks: int = 2,
    cost: dict[str, PerStage] | None = None,
    comm: float = 0.0,
    activation: PerStage = 1.0,
    kept_for_w: PerStage | None = None,
    cap: str | Number | Sequence[Number] | None = None,
) -> Problem:
    """The problem a generator solves for these arguments (its own placement)."""
    gen = get_generator(name)
    problem = make_problem(
        devices,
        microbatches,
        gen.placement,
        chunks=chunks if gen.placement == "loop" else 1,
        cost=cost,
        comm=comm,
        activation=activation,
        kept_for_w=kept_for_w,
        split_backward=gen.split_backward,
    )
    return problem.with_cap(parse_cap(cap, problem))


def generate(name: str, devices: int, microbatches: int, **options) -> Schedule:
    """Run generator `name`; options as for `problem_for`."""
    problem = problem_for(name, devices, microbatches, **options)
    return get_generator(name).build(problem)


# Importing the modules registers their generators.
from pipesynth.construct import linear  # noqa: E402,F401,I001  (first: gpipe and 1f1b lead `pipesynth list`)
from pipesynth.construct import interleaved  # noqa: E402,F401
from pipesynth.construct import zero_bubble  # noqa: E402,F401
from pipesynth.construct import vshape  # noqa: E402,F401
from pipesynth.construct import dualpipe  # noqa: E402,F401
