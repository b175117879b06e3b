"""The partition search is exact (brute force over every split) and the plan never exceeds the budget."""

import itertools
import random
import threading
from dataclasses import replace

import pytest

import pipesynth.plan.search as search
from pipesynth.construct import GENERATORS, generate
from pipesynth.core.problem import make_problem, placement_for
from pipesynth.core.simulate import from_order
from pipesynth.core.validate import find_violations
from pipesynth.errors import InfeasibleError, PipesynthError
from pipesynth.plan.costs import model_costs
from pipesynth.plan.feasibility import least_memory
from pipesynth.plan.job import Device, Job, ModelShape, Training
from pipesynth.plan.partition import Partition, best_partition, device_static, even_partition, stage_figures
from pipesynth.plan.search import inflight, limited_1f1b_order, plan_job, plan_output, with_recompute


def small_job(layers: int = 6, gpus: int = 2, microbatches: int = 4, memory: float = 2**30, vocab: int = 2048) -> Job:
    model = ModelShape(
        hidden=256, intermediate=688, layers=layers, heads=4, kv_heads=2, head_dim=64, vocab=vocab, name="small"
    )
    return Job(model, Training(seq_len=128, microbatch_size=1, microbatches=microbatches), Device(1, 0.5, memory), gpus)


def all_partitions(layers: int, stages: int):
    """Every split of [embedding, layers, head] into `stages` non-empty consecutive runs."""
    for cuts in itertools.combinations(range(1, layers + 2), stages - 1):
        bounds = (0, *cuts, layers + 2)
        counts = [bounds[s + 1] - bounds[s] - (s == 0) - (s == stages - 1) for s in range(stages)]
        if stages == 1:
            counts = [layers]
        yield Partition(tuple(counts))


def surrogate(costs, partition, placement, devices, inflight, split):
    """The search's objective (the busiest device's work per microbatch) and its memory estimate (static
    bytes plus, per stage, microbatches alive x each layer's most held bytes), straight from the layers."""
    work = [0.0] * devices
    memory = device_static(costs, stage_figures(costs, partition), placement, devices)
    for s, (start, end) in enumerate(partition.item_ranges()):
        d = placement[s]
        for item in range(start, end):
            layer = costs.kind(item)
            work[d] += layer.forward + layer.backward + layer.weight
            memory[d] += inflight[s] * (max(layer.activation, layer.kept_for_w) if split else layer.activation)
    return max(work), max(memory)


@pytest.mark.parametrize("kind,devices,chunks", [("linear", 3, 1), ("loop", 2, 2), ("v", 2, 2), ("linear", 1, 1)])
def test_best_partition_matches_brute_force_over_every_split(kind, devices, chunks):
    rng = random.Random(7)
    job = small_job(layers=7)
    costs = model_costs(job)
    placement = placement_for(kind, devices, chunks)
    splits = list(all_partitions(costs.layers, len(placement)))
    for _ in range(12):
        inflight = [rng.randint(1, 5) for _ in placement]
        split = rng.random() < 0.5
        scored = [(surrogate(costs, p, placement, devices, inflight, split), p) for p in splits]
        memories = sorted(mem for (_, mem), _ in scored)
        budget = memories[rng.randrange(len(memories))] * rng.choice([1.0, 1.0001, 0.9999])
        feasible = [work for (work, mem), _ in scored if mem <= budget]
        found = best_partition(costs, placement, devices, inflight, split, budget)
        if not feasible:
            assert found is None
            continue
        assert found is not None
        work, memory = surrogate(costs, found, placement, devices, inflight, split)
        assert memory <= budget * (1 + 1e-9)
        assert work == pytest.approx(min(feasible), rel=1e-9)


def test_even_partition_is_torchtitans_split():
    # 32 layers + embedding + head over 8 stages: 34 = 4 x 8 + 2, the first two stages take the extra ones.
    assert even_partition(32, 8).layers == (4, 5, 4, 4, 4, 4, 4, 3)
    assert even_partition(6, 8).layers == (0, 1, 1, 1, 1, 1, 1, 0)
    assert even_partition(5, 1).layers == (5,)
    with pytest.raises(PipesynthError, match="cannot split 5 layers"):
        even_partition(5, 8)


def test_best_partition_scales_to_128_layers_and_64_stages():
    model = ModelShape(hidden=1024, intermediate=2816, layers=128, heads=8, kv_heads=8, head_dim=128, vocab=32000)
    job = Job(model, Training(seq_len=1024, microbatch_size=1, microbatches=64), Device(100, 0.5, 80 * 2**30), 32)
    costs = model_costs(job)
    placement = placement_for("v", 32)
    found = best_partition(costs, placement, 32, [8] * 64, True, 80 * 2**30)
    assert found is not None and sum(found.layers) == 128 and len(found.layers) == 64


@pytest.mark.parametrize("memory", [2**30, 160 * 2**20])
def test_plan_fits_the_budget_and_is_never_slower_than_an_evenly_split_schedule_that_fits(memory):
    job = small_job(memory=memory)
    result = plan_job(job, time_limit=2)
    budget = job.device.budget
    assert max(result.plan.total) <= budget
    fitting = [b.makespan for b in result.baselines if b.fits(budget)]
    assert all(result.plan.makespan <= m + 1e-6 for m in fitting)
    schedule, section = plan_output(result)
    assert not find_violations(schedule)  # the file's problem carries each device's cap: budget - static
    assert all(m.total <= budget for m in section.memory)
    assert [m.static + c for m, c in zip(section.memory, schedule.problem.cap)] == [budget] * job.gpus


def test_a_budget_below_one_layer_names_that_layer():
    job = small_job(memory=2**30, vocab=2**17)  # the head: 2^17 x 256 x 16 bytes = 512 MiB static, 128 MiB logits
    costs = model_costs(job)
    emb = costs.embedding
    budget = emb.static + max(emb.activation, emb.kept_for_w) + 1  # the embedding fits, the head does not
    assert costs.head.static + costs.head.activation > budget
    small = Job(job.model, job.training, Device(1, 0.5, budget), job.gpus)
    with pytest.raises(InfeasibleError, match="the head .* alone needs"):
        plan_job(small, time_limit=1)


def test_a_budget_nothing_fits_says_by_how_much_and_what_would_fit():
    job = small_job(memory=2**30)
    costs = model_costs(job)
    on_two, on_four = least_memory(job, costs), least_memory(replace(job, gpus=4), costs)
    assert on_four < on_two
    budget = (on_two + on_four) / 2
    squeezed = replace(job, device=Device(1, 0.5, budget))
    with pytest.raises(InfeasibleError, match=r"short by .*would fit: .*--gpus 4"):
        plan_job(squeezed, time_limit=1)
    # Just above the least: a plan exists (one microbatch alive per stage at worst).
    roomy = replace(job, device=Device(1, 0.5, on_two * 1.001))
    assert max(plan_job(roomy, time_limit=2).plan.total) <= on_two * 1.001


@pytest.mark.parametrize("devices,microbatches", [(4, 8), (5, 3), (1, 4)])
def test_limited_1f1b_runs_with_at_most_its_limit_in_flight_and_is_1f1b_at_d(devices, microbatches):
    problem = make_problem(devices, microbatches, "linear", cost={"F": 1, "B": 2}, split_backward=False)
    for limit in range(1, devices + 1):
        order = limited_1f1b_order(devices, microbatches, limit)
        schedule = from_order(problem, order, "limited")  # raises on a deadlock
        assert not find_violations(schedule)
        most, _ = inflight(problem, order)
        assert max(most) == min(limit, devices, microbatches)
    full = from_order(problem, limited_1f1b_order(devices, microbatches, devices), "limited")
    assert full.metrics == generate("1f1b", devices, microbatches, cost={"F": 1, "B": 2}).metrics


def test_recompute_alternative_fits_the_budget_and_is_offered_only_without_recompute():
    job = small_job(memory=160 * 2**20)
    quick = with_recompute(job, model_costs(job))
    assert quick is not None and quick.fits(job.device.budget)
    full = replace(job, training=replace(job.training, recompute="full"))
    assert model_costs(full).decoder.activation < model_costs(job).decoder.activation / 10  # keeps its input only
    assert with_recompute(full, model_costs(full)) is None


class StopAfter:
    """Counts the search's timings (`metrics_of`, one per candidate split) and sets `stop` at the n-th."""

    def __init__(self, monkeypatch, n: int) -> None:
        self.n, self.calls, self.solves = n, 0, 0
        self.stop = threading.Event()
        real_metrics, real_solve = search.metrics_of, search.solve

        def metrics_of(*args):
            self.calls += 1
            if self.calls >= self.n:
                self.stop.set()
            return real_metrics(*args)

        def solve(*args, **kwargs):
            self.solves += 1
            return real_solve(*args, **kwargs)

        monkeypatch.setattr(search, "metrics_of", metrics_of)
        monkeypatch.setattr(search, "solve", solve)


# This job's full search times 30 splits (1-2 limited 1F1B, before the baselines are built; 3-22 the
# baselines' proposals; 23-26 the recompute hint; 27-30 improving), then runs CP-SAT: a stop in each phase.
@pytest.mark.parametrize("n", [1, 3, 23, 27])
def test_a_stopped_search_times_nothing_more_and_returns_the_best_plan_so_far(monkeypatch, n):
    job = small_job()
    counter = StopAfter(monkeypatch, n)
    result = plan_job(job, time_limit=3600, stop=counter.stop)  # the stop event, not the clock, ends it
    assert counter.calls == n and counter.solves == 0 and result.solver == {}
    budget = job.device.budget
    assert result.plan.fits(budget)
    fitting = [b.makespan for b in result.baselines if b.fits(budget)]
    assert all(result.plan.makespan <= m + 1e-6 for m in fitting)
    assert fitting or set(result.skipped.values()) == {search.NOT_BUILT}  # n = 1: stopped before any build


def test_a_search_stopped_before_anything_fits_says_so_in_one_line(monkeypatch):
    counter = StopAfter(monkeypatch, 1)
    counter.stop.set()
    with pytest.raises(PipesynthError, match="^time limit: the search was stopped before a plan that fits was found"):
        plan_job(small_job(), time_limit=3600, stop=counter.stop)
    assert counter.calls == 0 and counter.solves == 0


def test_a_stopped_search_lists_the_baselines_it_did_not_build(monkeypatch):
    counter = StopAfter(monkeypatch, 10**9)  # stopped by the build below
    built = []
    one_f_one_b = GENERATORS["1f1b"]

    def build_then_stop(problem):  # an in-process build (the V builders run in child processes)
        built.append("1f1b")
        counter.stop.set()
        return one_f_one_b.build(problem)

    monkeypatch.setitem(GENERATORS, "1f1b", replace(one_f_one_b, build=build_then_stop))
    result = plan_job(small_job(), time_limit=3600, stop=counter.stop)
    assert built == ["1f1b"] and counter.solves == 0
    assert [b.generator for b in result.baselines] == ["gpipe", "1f1b"]  # those built before the stop
    assert result.plan.generator in ("gpipe", "1f1b")
    names = [g.name for g in GENERATORS.values() if g.placement != "linear" or g.name not in ("gpipe", "1f1b")]
    assert result.skipped == {name: search.NOT_BUILT for name in names}
    assert counter.calls == 2  # limited 1F1B (limits 2 and 1), timed before the builds; nothing after the stop
