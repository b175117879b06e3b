"""Handcrafted generators reproduce their papers' closed forms (equal and unequal costs, comm 0)."""

import pytest

from pipesynth import validate
from pipesynth.construct import generate
from pipesynth.core.simulate import simulate
from pipesynth.errors import PipesynthError

GRID = [(d, m) for d in range(1, 9) for m in range(1, 3 * d + 2)]
COSTS = [{"F": 1, "B": 1, "W": 1}, {"F": 3, "B": 4, "W": 2}, {"F": 1, "B": 2, "W": 1}, {"F": 2, "B": 1, "W": 3}]


def work(cost, m):
    return m * (cost["F"] + cost["B"] + cost["W"])


@pytest.mark.parametrize("cost", COSTS, ids=lambda c: "F{F}B{B}W{W}".format(**c))
def test_zb_h1_makespan_is_the_papers_closed_form_and_keeps_1f1b_peak(cost):
    f, b, w = cost["F"], cost["B"], cost["W"]
    for d, m in GRID:
        s = generate("zb-h1", d, m, cost=cost)
        validate(s)
        assert max(s.metrics.peak_memory) == min(d, m)
        assert max(s.metrics.peak_memory) <= max(generate("1f1b", d, m).metrics.peak_memory)
        if m >= d:  # (D-1)(F+B-W) warm-up bubble, never below the (D-1)F ramp
            assert s.metrics.makespan == work(cost, m) + (d - 1) * max(f + b - w, f), (d, m)


def test_zb_h1_with_equal_costs_has_a_third_of_1f1bs_bubble_time():
    for d, m in GRID:
        s = generate("zb-h1", d, m)
        assert s.metrics.makespan == 2 * m + d - 1 + max(m, d), (d, m)
        if m >= d:
            # 1F1B idles 3(D-1) per device, ZB-H1 (D-1): the bubble rates below follow.
            assert s.metrics.bubble_rate == pytest.approx((d - 1) / (3 * m + d - 1), abs=1e-6)
            one_f_one_b = generate("1f1b", d, m)
            assert 3 * (s.metrics.makespan - 3 * m) == one_f_one_b.metrics.makespan - 3 * m


@pytest.mark.parametrize("cost", COSTS, ids=lambda c: "F{F}B{B}W{W}".format(**c))
def test_zb_h2_reaches_the_ramp_bound_with_2d_minus_1_in_flight(cost):
    for d, m in GRID:
        s = generate("zb-h2", d, m, cost=cost)
        validate(s)
        assert max(s.metrics.peak_memory) == min(m, 2 * d - 1)
        if m >= 2 * d - 1:
            # Device D-1 cannot start before D-1 forwards: the lower bound for one stage per device.
            assert s.metrics.makespan == work(cost, m) + (d - 1) * cost["F"], (d, m)


def test_zb_h2_with_equal_costs_leaves_no_gap_on_any_device():
    for d, m in GRID:
        if m < 2 * d - 1:
            continue
        sim = simulate(generate("zb-h2", d, m))
        for dev, (starts, ends, busy) in enumerate(zip(sim.start, sim.end, sim.busy)):
            assert ends[-1] - starts[0] == busy == 3 * m, (d, m, dev)


def test_zb_h2_beats_zb_h1_when_backward_outweighs_weight_gradient():
    h1 = generate("zb-h1", 4, 8, cost={"F": 3, "B": 4, "W": 2})
    h2 = generate("zb-h2", 4, 8, cost={"F": 3, "B": 4, "W": 2})
    assert h2.metrics.makespan < h1.metrics.makespan


def test_interleaved_bubble_is_megatrons_when_m_is_a_multiple_of_d():
    for d in range(1, 7):
        for v in (2, 3, 4):
            for m in (d, 2 * d, 3 * d):
                s = generate("interleaved-1f1b", d, m, chunks=v)
                validate(s)
                # Chunk passes cost F=1, fused B=2: Megatron's bubble (D-1)(F+B) per device, i.e. (D-1)/(vm).
                assert s.metrics.makespan == 3 * v * m + 3 * (d - 1), (d, v, m)
                assert s.problem.split_backward is False and s.problem.stages == v * d


def test_interleaved_with_fewer_microbatches_than_devices_runs_one_group():
    for d in range(2, 7):
        for v in (2, 3):
            for m in range(1, d):
                s = generate("interleaved-1f1b", d, m, chunks=v)
                validate(s)
                assert s.metrics.makespan == 3 * (v * d + m - 1), (d, v, m)


def test_interleaved_with_one_chunk_is_exactly_1f1b():
    for d, m in GRID:
        assert generate("interleaved-1f1b", d, m, chunks=1).actions == generate("1f1b", d, m).actions


def test_interleaved_explains_the_remainders_megatron_cannot_order():
    with pytest.raises(PipesynthError, match=r"use a multiple of 4 \(4 or 8\) or at most 4"):
        generate("interleaved-1f1b", 4, 5, chunks=3)


def test_unknown_generator_lists_the_known_ones():
    with pytest.raises(PipesynthError, match="unknown generator 'zb-h3'; available: .*zb-h2"):
        generate("zb-h3", 4, 8)
