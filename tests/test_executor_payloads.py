"""Stages that take and return trees of tensors; changing batch shapes; eval; bad input named on every rank."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from payload_workers import bad_input_run, placement_run, tree_runs  # noqa: E402

from pipesynth.construct import generate  # noqa: E402
from pipesynth.formats.schedule_json import dumps  # noqa: E402
from pipesynth.runtime.launch import launch  # noqa: E402
from pipesynth.runtime.payload import Layout, flatten, merge, split_batch, unflatten  # noqa: E402

TOL = 1e-10  # float64

# Four stages on two ranks: a V (its bottom hands over in memory) and a loop (every boundary crosses ranks).
CASES = [("v-half", 1), ("zb-v", 1), ("interleaved-1f1b", 2)]


@pytest.fixture(scope="module")
def tree_results():
    texts = [dumps(generate(name, 2, 4, chunks=chunks)) for name, chunks in CASES]
    per_rank = launch(tree_runs, 2, texts, timeout=30)
    return {name: [r[i] for r in per_rank] for i, (name, _) in enumerate(CASES)}


@pytest.mark.parametrize("name,chunks", CASES)
def test_dicts_tuples_integers_no_grad_tensors_and_an_aux_loss_give_single_process_gradients(
    tree_results, name, chunks
):
    """Steps of 8 then a smaller last batch with longer integer inputs (shapes learnt again), kwargs cut
    or not by their first dimension, then eval_step: all equal one process."""
    per_rank = tree_results[name]
    evals = [r[2] for r in per_rank if r[2] is not None]
    assert len(evals) == 1  # the last stage's rank
    for rank, (loss_err, grad_err, _, _, leftover) in enumerate(per_rank):
        assert loss_err <= TOL, f"{name}: loss differs by {loss_err} on rank {rank}"
        assert grad_err <= TOL, f"{name}: a gradient differs by {grad_err} on rank {rank}"
        assert leftover == 0, f"{name}: {leftover} saved bytes outlive the steps on rank {rank}"
    if chunks == 1:  # the middle stage's raw parameter takes the graph split where B and W are split
        assert [1] in [r[3] for r in per_rank]
    eval_err, aux_shape = evals[0]
    assert eval_err <= TOL and aux_shape == (4,)


@pytest.mark.parametrize("name,ranks", [("v-half", 2), ("1f1b", 3)])
def test_a_stage_output_that_is_not_tensors_is_named_on_every_rank(name, ranks):
    messages = launch(bad_input_run, ranks, dumps(generate(name, ranks, 4)), "output", timeout=30)
    for msg in messages:
        assert msg is not None and "rank 1, stage 1 returns a object at output" in msg, msg
    assert messages[0].startswith("rank 0: stopped by rank 1:")  # told by its peer, not timed out


def test_inputs_that_do_not_split_into_microbatches_are_named_on_every_rank():
    messages = launch(bad_input_run, 2, dumps(generate("1f1b", 2, 4)), "batch", timeout=30)
    for msg in messages:
        assert msg is not None, "a rank got no error"
        assert "stage 0: keyword input 'x': a batch of 6 does not split into 4 equal microbatches" in msg, msg


def test_stages_placed_as_a_loop_for_a_v_schedule_are_refused_on_every_rank():
    messages = launch(placement_run, 2, dumps(generate("zb-v", 2, 4)), timeout=30)
    for rank, msg in enumerate(messages):
        assert msg is not None and msg.startswith(f"rank {rank}: stage 2 does not sit where the schedule puts it")
        assert "rank 0 was given modules for stages [0, 2] (loop placement)" in msg
        assert "but zb-v places stages [0, 3] on it (v placement [0, 1, 1, 0], 4 stages)" in msg


def test_flatten_and_unflatten_round_trip_a_nested_output():
    a, b = torch.ones(2, requires_grad=True), torch.arange(3)
    value = {"h": a, "extra": (b, None, [1.5, "x"]), "c": (a * 2).detach()}
    tensors, layout = flatten(value, "stage 3")
    assert [t is a for t in tensors] == [True, False, False] and layout.grad_indices == [0]
    rebuilt = unflatten(layout, tensors)
    assert rebuilt["extra"][1:] == (None, [1.5, "x"]) and rebuilt["extra"][0] is b
    assert isinstance(layout, Layout) and [s.dtype for s in layout.specs] == [a.dtype, b.dtype, a.dtype]


def test_split_batch_cuts_batch_tensors_and_repeats_the_rest():
    cpu = torch.device("cpu")
    x, scale = torch.arange(8.0).reshape(4, 2), torch.ones(3)
    pieces = split_batch({"x": x, "scale": scale, "n": 3}, 4, 2, cpu, "input")
    assert [p["x"].tolist() for p in pieces] == [x[:2].tolist(), x[2:].tolist()]
    assert all(p["scale"] is pieces[0]["scale"] and p["n"] == 3 for p in pieces)
    assert merge([p["x"] for p in pieces]).tolist() == x.tolist()
    with pytest.raises(Exception, match=r"input\['x'\]: a batch of 4 does not split into 3 equal microbatches"):
        split_batch({"x": x}, 4, 3, cpu, "input")
