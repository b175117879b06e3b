"""The V-shape family: the paper's memory and bubble figures, validity over many sizes.

The comparison with the official implementation below runs on the public
anchor instances, the very instances the reorder portfolios
(construct.blocks.UNROLL_VARIANTS, construct.vshape.ZB_V_VARIANTS) were
chosen on: it is in-sample, a regression guard, not evidence that they
generalise. benchmarks/anchors.py reports the out-of-sample instances apart
(benchmarks/results/anchors.md).
"""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipesynth.construct import generate, problem_for
from pipesynth.construct.blocks import block_violations, memory_bound, steady_peak
from pipesynth.construct.slotgrid import slot_grid_order
from pipesynth.construct.vshape import unit_block, v_block, v_slots
from pipesynth.core.simulate import from_order
from pipesynth.core.validate import find_violations
from pipesynth.errors import PipesynthError

ANCHORS = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/anchors/official_v_schedules.json").read_text())
V_NAMES = ["v-min", "v-half", "v-zb", "zb-v"]
PEAK = {
    "v-min": lambda d: 2 * ((d + 4) // 3),
    "v-half": lambda d: 2 * ((d + 2) // 2),
    "v-zb": lambda d: 2 * d,
}


@pytest.mark.parametrize("name", ["v-min", "v-half", "v-zb"])
def test_blocks_are_valid_and_steady_peak_is_the_papers(name):
    for d in range(2, 17):
        block = v_block(problem_for(name, d, 1), name)
        assert block_violations(block) == [], (name, d)
        assert block.interval == 6  # equal costs: the paper's 6 slots, one pass each
        assert max(steady_peak(block)) == PEAK[name](d), (name, d)
        assert all(peak <= bound for peak, bound in zip(steady_peak(block), memory_bound(block)))


@pytest.mark.parametrize("name", ["v-min", "v-half", "v-zb", "zb-v"])
@pytest.mark.parametrize("devices", [2, 3, 5, 6, 9])
def test_simulated_peak_meets_the_papers_memory(name, devices):
    s = generate(name, devices, 3 * devices)
    assert find_violations(s) == []
    expected = PEAK.get(name, lambda d: 2 * d)(devices)
    if name in ("v-min", "v-half"):
        assert max(s.metrics.peak_memory) == expected
    else:
        assert max(s.metrics.peak_memory) <= expected


@pytest.mark.parametrize("name,bubble", [("v-min", 0.1332), ("v-half", 0.0965), ("v-zb", 0.0376), ("zb-v", 0.0376)])
def test_bubble_at_16_devices_64_microbatches_is_no_worse_than_the_papers(name, bubble):
    s = generate(name, 16, 64)
    assert find_violations(s) == []
    assert s.metrics.bubble_rate <= bubble
    assert max(s.metrics.peak_memory) <= (PEAK.get(name, lambda d: 2 * d))(16)


def small_anchor_cases():
    for inst in ANCHORS["instances"]:
        if inst["p"] > 8:
            continue
        for name in ("v-min", "v-half", "zb-v"):
            yield pytest.param(inst, name, id=f"{name}-p{inst['p']}-cost{'-'.join(map(str, inst['cost']))}")


@pytest.mark.parametrize("inst,name", small_anchor_cases())
def test_makespan_no_worse_than_the_official_implementation(inst, name):
    """In-sample: the portfolios were chosen on these instances (see the module docstring)."""
    ref = inst["results"][name]
    s = generate(name, inst["p"], inst["m"], cost=dict(zip("FBW", inst["cost"])), comm=inst["comm"])
    assert max(s.metrics.peak_memory) <= ref["peak_chunks"]
    assert s.metrics.makespan <= ref["makespan"]


def stable_gaps(schedule, device):
    """Idle time between consecutive passes of a device in the middle third of the run."""
    acts = schedule.actions[device]
    span = schedule.metrics.makespan
    mid = [a for a in acts if span / 3 <= a.start <= 2 * span / 3]
    return sum(b.start - a.end for a, b in zip(mid, mid[1:]))


@pytest.mark.parametrize("cost", [(3, 4, 2), (2, 2, 1), (1, 2, 3), (4, 3, 2), (2, 2, 3)])
def test_v_half_has_no_stable_bubble_when_the_papers_condition_holds(cost):
    f, b, w = cost
    assert w + 2 * b >= 2 * f and w + 2 * f >= 2 * b
    cost = dict(zip("FBW", cost))
    block = v_block(problem_for("v-half", 5, 1, cost=cost), "v-half")
    assert block.interval == 2 * (f + b + w)  # each device busy all of T
    s = generate("v-half", 5, 40, cost=cost)
    assert all(stable_gaps(s, d) == 0 for d in range(5))


def test_v_half_stable_bubble_when_the_condition_fails_and_v_min_has_one_anyway():
    cost = {"F": 5, "B": 3, "W": 1}  # W + 2B < 2F
    assert v_block(problem_for("v-half", 5, 1, cost=cost), "v-half").interval > 18
    s = generate("v-half", 5, 40, cost=cost)
    assert any(stable_gaps(s, d) > 0 for d in range(5))
    assert v_block(problem_for("v-min", 5, 1, cost={"F": 3, "B": 4, "W": 2}), "v-min").interval > 18


#: Sizes that cover the edge cases of the generators: one microbatch, fewer microbatches than devices,
#: as many, not a multiple; D % 3 == 0 (V-Min's gap) and even D (V-Half's); V-Half's no-bubble condition
#: failing (5 devices, F/B/W 3/1/2); comm; costs apart both ways; and one larger pipeline.
EDGE_SIZES = [
    (2, 1, (1, 1, 1), 0),
    (3, 2, (1, 2, 0.5), 0),
    (4, 4, (1, 1, 1), 0.25),
    (5, 7, (3, 1, 2), 0),
    (6, 13, (0.5, 1, 3), 0.25),
    (7, 21, (1, 1, 1), 0),
    (9, 10, (2, 3, 1), 0.25),
    (12, 24, (1, 2, 0.5), 0.25),
]


def check_validity_and_memory(name, devices, microbatches, cost, comm):
    s = generate(name, devices, microbatches, cost=cost, comm=comm)
    assert find_violations(s) == []
    assert s.problem.microbatches == microbatches
    if name != "zb-v":
        bound = memory_bound(v_block(s.problem, name))
        assert all(peak <= b for peak, b in zip(s.metrics.peak_memory, bound))
    else:
        assert max(s.metrics.peak_memory) <= 2 * devices


@pytest.mark.parametrize("name", V_NAMES)
@pytest.mark.parametrize("devices,microbatches,cost,comm", EDGE_SIZES)
def test_edge_sizes_validate_within_the_memory_of_their_block(name, devices, microbatches, cost, comm):
    check_validity_and_memory(name, devices, microbatches, dict(zip("FBW", cost)), comm)


settings_ = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def sizes(draw):
    devices = draw(st.integers(2, 8))
    microbatches = draw(st.integers(1, 3 * devices))
    cost = {op: draw(st.sampled_from([1, 2, 3, 0.5])) for op in "FBW"}
    return devices, microbatches, cost, draw(st.sampled_from([0, 0, 0.25]))


@pytest.mark.parametrize("name", V_NAMES)
@settings_
@given(case=sizes())
def test_every_size_validates_within_the_memory_of_its_block(name, case):
    """Random sizes beyond EDGE_SIZES (few and small: the suite stays fast; 16 devices are checked below)."""
    check_validity_and_memory(name, *case)


def test_cap_is_respected_or_refused():
    s = generate("zb-v", 4, 16, cap=6)
    assert max(s.metrics.peak_memory) <= 6 and find_violations(s) == []
    with pytest.raises(PipesynthError, match="needs the V-shape placement|needs at least 2 devices"):
        generate("v-half", 1, 4)


@pytest.mark.parametrize("name", ["v-min", "v-half", "v-zb"])
@pytest.mark.parametrize("devices,microbatches", [(2, 1), (3, 2), (4, 16), (5, 7), (6, 19)])
def test_slot_grid_plan_is_valid_within_the_papers_memory(name, devices, microbatches):
    p = problem_for(name, devices, microbatches, cost={"F": 3, "B": 4, "W": 2}, comm=0.5)
    unit = unit_block(p, v_slots(p, name))
    s = from_order(p, slot_grid_order(unit.problem, unit.offsets, microbatches), name)
    assert find_violations(s) == []
    assert max(s.metrics.peak_memory) <= PEAK[name](devices)
