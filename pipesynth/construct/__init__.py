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


def get_generator(name: str) -> Generator:
    try:
        return GENERATORS[name]
    except KeyError:
        known = ", ".join(sorted(GENERATORS))
        raise PipesynthError(f"schedule: unknown generator {name!r}; available: {known}") from None


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
