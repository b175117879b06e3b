"""The pass rules (docs/design.md sections 1 and 2), in one place.

What each pass waits for, what a dependency between devices costs, and what
memory each pass takes or frees. The simulator, the validator, the
generators and reorders, the solver's models and bounds, and the executor's
P2P plan all ask here, so a new kind of pass or a new comm rule is one edit.
"""

from __future__ import annotations

from pipesynth.core.problem import Op, Problem

PassKey = tuple[Op, int, int]  # (op, stage, microbatch): one pass of one microbatch
PassId = tuple[Op, int]  # (op, stage): a pass of any one microbatch


def dependencies(problem: Problem, op: Op, stage: int, mb: int) -> list[PassKey]:
    """The passes that must end before (op, stage, mb) can start: all of the same microbatch.

    F waits for F of the stage before; B for F of its own stage and B of the
    stage after; W for B of its own stage.
    """
    if op == "F":
        return [("F", stage - 1, mb)] if stage > 0 else []
    if op == "B":
        deps: list[PassKey] = [("F", stage, mb)]
        if stage < problem.stages - 1:
            deps.append(("B", stage + 1, mb))
        return deps
    return [("B", stage, mb)]


def successors(problem: Problem, op: Op, stage: int, mb: int) -> list[PassKey]:
    """The passes that depend directly on (op, stage, mb): the reverse of `dependencies`."""
    if op == "F":
        out: list[PassKey] = [("B", stage, mb)]
        return out + ([("F", stage + 1, mb)] if stage + 1 < problem.stages else [])
    if op == "B":
        out = [("W", stage, mb)] if problem.split_backward else []
        return out + ([("B", stage - 1, mb)] if stage > 0 else [])
    return []


def edges(problem: Problem) -> list[tuple[PassId, PassId]]:
    """One microbatch's dependencies as (before, after) pairs (every microbatch has the same)."""
    passes = [(op, s) for s in range(problem.stages) for op in problem.ops]
    return [((dop, ds), (op, s)) for op, s in passes for dop, ds, _ in dependencies(problem, op, s, 0)]


def crosses_devices(problem: Problem, from_stage: int, to_stage: int) -> bool:
    """A dependency between stages on different devices is a P2P message."""
    return problem.placement[from_stage] != problem.placement[to_stage]


def comm_delay(problem: Problem, from_stage: int, to_stage: int) -> float:
    """Extra wait of a dependency: `comm` between devices, nothing on one device."""
    return problem.comm if crosses_devices(problem, from_stage, to_stage) else 0.0


def chain_position(problem: Problem, op: Op, stage: int) -> float:
    """Where the pass sits in its microbatch's chain: F down the stages, B back up, W right after its B.

    Sorting by (microbatch, chain position) keeps every dependency first,
    even when zero costs put passes at the same time.
    """
    if op == "F":
        return stage
    back = 2 * problem.stages - 1 - stage
    return back if op == "B" else back + 0.5


def chain_order(problem: Problem) -> list[PassId]:
    """One microbatch's passes in chain order (each W right after its B): always a valid sequence."""
    passes = [(op, s) for s in range(problem.stages) for op in problem.ops]
    return sorted(passes, key=lambda k: chain_position(problem, *k))


def freeing_pass(problem: Problem) -> Op:
    """The pass that frees the last of a stage's activation: W when the backward is split, else B."""
    return "W" if problem.split_backward else "B"


def releasing_passes(problem: Problem) -> list[Op]:
    """The passes that free activation: B and W when the backward is split, else B alone."""
    return [op for op in problem.ops if op != "F"]


def released(op: Op, activation: float, kept_for_w: float, split_backward: bool) -> float:
    """Memory a pass frees once it has run, from one stage's activation and the part W still needs.

    B frees what W does not need (all of it when the backward is fused); W
    frees the rest; F frees nothing. Takes plain numbers so the solver's
    integer-scaled problem applies the very same rule.
    """
    if op == "B":
        return activation - (kept_for_w if split_backward else 0)
    if op == "W":
        return kept_for_w
    return 0


def release(problem: Problem, op: Op, stage: int) -> float:
    """Memory (op, stage) frees once it has run."""
    return released(op, problem.activation[stage], problem.kept_for_w[stage], problem.split_backward)


def memory_change(op: Op, activation: float, kept_for_w: float, split_backward: bool) -> float:
    """Change of a device's memory once the pass has run: F adds the activation, B and W free (`released`)."""
    return activation if op == "F" else -released(op, activation, kept_for_w, split_backward)


def memory_delta(problem: Problem, op: Op, stage: int) -> float:
    """`memory_change` of (op, stage) on the problem's activations."""
    return memory_change(op, problem.activation[stage], problem.kept_for_w[stage], problem.split_backward)
