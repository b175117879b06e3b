"""DualPipeV: valid, torch's action order, and the published figures that hold with F&B run back to back.

DeepSeek's README (github.com/deepseek-ai/DualPipe) gives DualPipeV, on PP = 2D
stages over D devices, PP + 1 activations per device and a bubble of
(PP/2 - 1)(F&B + B - 3W), its B a full backward and F&B an overlapped pair.
Here the pair runs back to back (docs/design.md section 3), so F&B = F + B + W
and the README's B is our B + W: the formula reads (D - 1)(F + 2B - W). With
bubble = makespan - 2m(F + B + W) (the idle time of a device, all doing the
same work at one cost per pass), what holds is tested below:

- peak memory is exactly 2D + 1 chunk units on every device, at any costs;
- no steady-state bubble: one more microbatch adds exactly 2(F + B + W);
- at equal costs F = B = W = c the bubble is (D - 1)c, half the formula's
  2(D - 1)c: the back-to-back pair never waits inside itself;
- the bubble is at most (D - 1)(F + 2B - W) when W <= F <= 2B; it is not a
  bound when the forward is long (F > 2B), e.g. F = 4, B = 1, W = 1.
"""

import itertools

import pytest

from pipesynth import validate
from pipesynth.construct import generate
from pipesynth.construct.dualpipe import dualpipev_order
from pipesynth.core.problem import make_problem
from pipesynth.errors import PipesynthError
from pipesynth.solver.hints import applicable, build

GRID = [(d, m) for d in (2, 4, 8) for m in (2 * d, 2 * d + 1, 3 * d)]
COSTS = [{"F": f, "B": b, "W": w} for f, b, w in itertools.product((1, 2, 3), (1, 2, 4), (0, 1, 3))]


def bubble(schedule, cost) -> float:
    return schedule.metrics.makespan - 2 * schedule.problem.microbatches * (cost["F"] + cost["B"] + cost["W"])


@pytest.mark.parametrize("d,m", GRID)
def test_dualpipev_is_valid_and_every_device_peaks_at_2d_plus_1(d, m):
    for cost in COSTS:
        schedule = generate("dualpipev", d, m, cost=cost)
        validate(schedule)
        assert schedule.metrics.peak_memory == (2 * d + 1,) * d, cost


@pytest.mark.parametrize("d", [2, 4, 8])
def test_dualpipev_has_no_steady_state_bubble(d):
    for cost in COSTS:
        work = 2 * (cost["F"] + cost["B"] + cost["W"])
        spans = [generate("dualpipev", d, m, cost=cost).metrics.makespan for m in range(2 * d, 3 * d + 2)]
        assert [b - a for a, b in zip(spans, spans[1:])] == [work] * (len(spans) - 1), cost


@pytest.mark.parametrize("d,m", GRID)
def test_dualpipev_at_equal_costs_idles_d_minus_1_passes(d, m):
    for c in (1, 3):
        cost = {"F": c, "B": c, "W": c}
        schedule = generate("dualpipev", d, m, cost=cost)
        assert bubble(schedule, cost) == (d - 1) * c
        assert bubble(schedule, cost) < (d - 1) * (cost["F"] + 2 * cost["B"] - cost["W"])  # the README's


@pytest.mark.parametrize("d,m", GRID)
def test_dualpipev_bubble_is_within_the_readmes_formula_when_w_le_f_le_2b(d, m):
    for cost in COSTS:
        if cost["W"] <= cost["F"] <= 2 * cost["B"]:
            readme = (d - 1) * (cost["F"] + 2 * cost["B"] - cost["W"])
            assert bubble(generate("dualpipev", d, m, cost=cost), cost) <= readme, cost


def test_dualpipev_bubble_exceeds_the_readmes_formula_with_a_long_forward():
    cost = {"F": 4, "B": 1, "W": 1}
    assert bubble(generate("dualpipev", 4, 8, cost=cost), cost) > 3 * (4 + 2 - 1)


@pytest.mark.parametrize("d,m", [(2, 3), (4, 7), (8, 1)])
def test_dualpipev_refuses_fewer_than_2d_microbatches_naming_the_field(d, m):
    with pytest.raises(PipesynthError, match=rf"dualpipev: microbatches must be at least 2 x devices = {2 * d}"):
        generate("dualpipev", d, m)


def test_dualpipev_needs_the_v_placement_and_two_devices():
    with pytest.raises(PipesynthError, match="at least 2 devices"):
        generate("dualpipev", 1, 4)


def torch_order(d: int, m: int) -> list[list[tuple[str, int, int]]]:
    """torch's ScheduleDualPipeV lists, built without a process group, as our passes.

    A full backward is B then W; an overlapped pair is its forward, then its backward.
    """
    torch_schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    cls = getattr(torch_schedules, "ScheduleDualPipeV", None)
    if cls is None:
        pytest.skip("this torch has no ScheduleDualPipeV")
    ct = torch_schedules._ComputationType
    ours = {ct.FORWARD: ("F",), ct.BACKWARD_INPUT: ("B",), ct.BACKWARD_WEIGHT: ("W",), ct.FULL_BACKWARD: ("B", "W")}
    schedule = object.__new__(cls)
    schedule.pp_group_size, schedule._n_microbatches = d, m

    def passes(action):
        if action.computation_type == ct.OVERLAP_F_B:
            return [p for sub in action.sub_actions for p in passes(sub)]
        return [(op, action.stage_index, action.microbatch_index) for op in ours[action.computation_type]]

    return [[p for a in schedule._calculate_single_rank_operations(r) for p in passes(a)] for r in range(d)]


@pytest.mark.parametrize("d,m", [(2, 4), (2, 7), (3, 6), (4, 8), (4, 11)])
def test_dualpipev_runs_torchs_action_order_on_every_device(d, m):
    assert [dualpipev_order(d, m, i) for i in range(d)] == torch_order(d, m)
    assert [[a.key for a in dev] for dev in generate("dualpipev", d, m).actions] == torch_order(d, m)


def test_the_solver_starts_from_dualpipev_when_it_fits_the_cap():
    fits = make_problem(4, 8, "v", cap=9)
    assert "dualpipev" in applicable(fits)
    assert build("dualpipev", fits).metrics.peak_memory == (9,) * 4
    assert build("dualpipev", fits.with_cap((8,) * 4)) is None  # 1F1B's 2D chunk units: one short
