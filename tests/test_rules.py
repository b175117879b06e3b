"""The pass rules agree with themselves: successors reverse dependencies, the chain is topological,
a stage's passes free exactly what its F took."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pipesynth.core.problem import make_problem
from pipesynth.core.rules import (
    chain_order,
    comm_delay,
    dependencies,
    edges,
    memory_delta,
    release,
    successors,
)

problems = st.builds(
    lambda d, m, kind, split, act, kept_share, comm: make_problem(
        d,
        m,
        kind,
        activation=act,
        kept_for_w=act * kept_share,
        split_backward=split,
        comm=comm,
    ),
    st.integers(1, 4),
    st.integers(1, 3),
    st.sampled_from(["linear", "v", "loop"]),
    st.booleans(),
    st.floats(0.5, 4),
    st.floats(0, 1),
    st.sampled_from([0.0, 0.5]),
)


@given(problems)
@settings(max_examples=60, deadline=None)
def test_successors_are_exactly_the_reverse_of_dependencies(problem):
    passes = [(op, s, 0) for s in range(problem.stages) for op in problem.ops]
    forward = {(d, p) for p in passes for d in dependencies(problem, *p)}
    backward = {(p, n) for p in passes for n in successors(problem, *p)}
    assert forward == backward
    assert {(a, b) for a, b in edges(problem)} == {(d[:2], p[:2]) for d, p in forward}


@given(problems)
@settings(max_examples=60, deadline=None)
def test_chain_order_puts_every_dependency_first(problem):
    order = chain_order(problem)
    position = {k: i for i, k in enumerate(order)}
    assert len(order) == problem.stages * len(problem.ops)
    for a, b in edges(problem):
        assert position[a] < position[b]


@given(problems)
@settings(max_examples=60, deadline=None)
def test_a_stages_passes_free_exactly_what_its_forward_took(problem):
    for s in range(problem.stages):
        assert abs(sum(memory_delta(problem, op, s) for op in problem.ops)) < 1e-9
        assert all(release(problem, op, s) >= 0 for op in problem.ops)


def test_comm_is_paid_only_between_devices():
    problem = make_problem(2, 1, "v", comm=3)  # stages 0,1,2,3 on devices 0,1,1,0
    assert comm_delay(problem, 0, 1) == 3
    assert comm_delay(problem, 1, 2) == 0
    assert comm_delay(problem, 2, 3) == 3
