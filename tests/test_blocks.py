"""Building blocks: checks, lifespans, Eq. 1 memory bound, unrolling, and blocks of two microbatches."""

import pytest

from pipesynth.construct.blocks import Block, block_violations, lifespans, memory_bound, unroll
from pipesynth.core.problem import make_problem
from pipesynth.core.validate import find_violations, validate
from pipesynth.solver.block import repeat_block, solve_block
from pipesynth.solver.progress import SolverParams
from pipesynth.solver.scaled import Scaled


def two_device_block(interval=6.0, **options):
    """A hand-written V block on 2 devices (the paper's V-Min slots for D=2)."""
    p = make_problem(2, 1, "v", **options)
    offsets = {
        ("F", 0): 0, ("F", 3): 3, ("B", 3): 4, ("W", 3): 5, ("B", 0): 7, ("W", 0): 8,
        ("F", 1): 1, ("F", 2): 2, ("B", 2): 5, ("B", 1): 6, ("W", 2): 9, ("W", 1): 10,
    }  # fmt: skip
    return Block(p, interval, offsets)


def test_valid_block_has_no_violations_and_eq1_bound():
    b = two_device_block()
    assert block_violations(b) == []
    # stage 0 lives 0..9 -> 2 copies; stage 3 lives 3..6 -> 1 copy.
    assert lifespans(b) == (9.0, 10.0, 8.0, 3.0)
    assert memory_bound(b) == (3.0, 4.0)


def test_collision_and_dependency_are_reported():
    b = two_device_block(interval=5.0)
    assert any("overlaps" in v for v in block_violations(b))
    broken = Block(b.problem, 6.0, {**b.offsets, ("F", 1): 0.5})
    assert any("F of stage 1 starts at 0.5" in v for v in block_violations(broken))


def test_comm_is_required_between_devices():
    b = two_device_block(comm=0.5)
    assert any("before F of stage 0 is ready at 1.5" in v for v in block_violations(b))


@pytest.mark.parametrize("m", [1, 2, 3, 7, 16])
def test_unroll_validates_within_bound(m):
    b = two_device_block()
    s = unroll(b, m, name="hand")
    validate(s)
    assert s.problem.microbatches == m
    assert all(peak <= bound for peak, bound in zip(s.metrics.peak_memory, memory_bound(b)))


def test_a_block_of_two_microbatches_repeats_into_a_valid_schedule_under_the_cap():
    """k = 2 microbatches per period, each with its own offsets: the repeat keeps every rule and the cap."""
    problem = make_problem(4, 16, "v", cost={"F": 3, "B": 4, "W": 2}, cap=4)
    scaled = Scaled.of(problem)
    found = solve_block(scaled, 42, SolverParams(workers=2), 20.0, optimize=False, per_block=2)
    assert found.offsets is not None and {r for _, _, r in found.offsets} == {0, 1}
    schedule = repeat_block(scaled, 42, found.offsets, 16)
    assert find_violations(schedule) == []
    assert max(schedule.metrics.peak_memory) <= 4
