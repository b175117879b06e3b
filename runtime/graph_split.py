"""Split backward for parameters outside the split layers, along the autograd graph.

Split layers (split.py) cover Linear, LayerNorm and Embedding. Any other
parameter (a raw nn.Parameter, a custom op) is handled here, in the spirit
of torch.distributed.pipelining's stage_backward_input/weight:

- X: the autograd nodes on a path from the stage outputs to the stage inputs
  (those that take a gradient). B runs backward on X only (`inputs=xs`), so no weight-branch product is
  computed, and a pre-hook on each *frontier* node (a node of X with a next
  edge leaving X towards a parameter) records the gradient reaching it.
- W re-enters each frontier node for its leaving edges only, then runs the
  branches down to the parameters. A branch never re-enters X (a node that
  reaches the input is in X), so W redoes none of B's products.

B must keep the graph (retain_graph) for W, so these stages free their
activations after W, not after B. When a branch is shared by two frontier
edges (e.g. a tied parameter used twice) re-entering frontier nodes one by
one could count a gradient twice; `find_weight_branches` then returns None
and the caller runs a fused backward for those parameters instead (exact,
only not deferred).

A split layer on a branch (not on the input path) never ran in B, so it
queued nothing: W computes its weights' gradients with the branch, fused.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge


@dataclass
class WeightBranches:
    """Where B must capture gradients, and how W turns them into parameter gradients."""

    frontier: list[Node]
    leaving: dict[Node, list[tuple[Node, int]]]  # frontier node -> its next edges that leave X
    params: list[torch.Tensor]
    captured: dict[Node, tuple[torch.Tensor | None, ...]] = field(default_factory=dict)


def _graph(roots: list[Node]) -> tuple[list[Node], dict[Node, list[Node]]]:
    """Every node reachable from `roots`, and each node's parents (reverse edges)."""
    nodes = list(dict.fromkeys(roots))
    parents: dict[Node, list[Node]] = {root: [] for root in nodes}
    queue = deque(nodes)
    while queue:
        node = queue.popleft()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            if nxt not in parents:
                parents[nxt] = []
                nodes.append(nxt)
                queue.append(nxt)
            parents[nxt].append(node)
    return nodes, parents


def _reaching(targets: list[Node], parents: dict[Node, list[Node]]) -> set[Node]:
    """Nodes from which some target can be reached (targets included)."""
    seen = {t for t in targets if t in parents}
    queue = deque(seen)
    while queue:
        for parent in parents[queue.popleft()]:
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return seen


def find_weight_branches(
    roots: list[Node], xs: list[torch.Tensor], params: list[torch.Tensor], defers: Callable[[Node], bool]
) -> WeightBranches | None:
    """The frontier of the input paths (from the output nodes `roots` to the inputs `xs`) for `params`;
    None if W cannot be split off safely.

    `defers(node)` says a node queues its own weight gradients during B (a
    split layer): its edges to parameters are left to that queue.
    """
    _, parents = _graph(roots)
    on_input_path = _reaching([get_gradient_edge(x).node for x in xs], parents)
    param_nodes = [get_gradient_edge(p).node for p in params]
    to_params = _reaching(param_nodes, parents)
    leaving: dict[Node, list[tuple[Node, int]]] = {}
    roots: list[Node] = []
    for node in on_input_path:
        if defers(node):
            continue
        for nxt, nr in node.next_functions:
            if nxt is not None and nxt not in on_input_path and nxt in to_params:
                leaving.setdefault(node, []).append((nxt, nr))
                roots.append(nxt)
    if not _independent(roots, parents, on_input_path):
        return None
    reached = [p for p, n in zip(params, param_nodes) if n in to_params]
    return WeightBranches(list(leaving), leaving, reached)


def _independent(roots: list[Node], parents: dict[Node, list[Node]], on_input_path: set[Node]) -> bool:
    """Each branch hangs off X by one edge, and no branch root lies below another.

    Otherwise re-entering a frontier node could flow through X or another
    branch into a root and count its gradient twice (module docstring).
    """
    if len(set(roots)) != len(roots):
        return False
    if any(sum(parent in on_input_path for parent in parents[root]) != 1 for root in roots):
        return False
    children = {n: [c for c, _ in n.next_functions if c is not None] for n in parents}
    for root in roots:
        below = _reaching([root], children)  # walking `children` as if parents: what lies below
        if any(other in below for other in roots if other is not root):
            return False
    return True


def backward_input(
    branches: WeightBranches, outputs: list[torch.Tensor | GradientEdge], grads: list | None, xs: list[torch.Tensor]
) -> None:
    """B: the input gradients into each `x.grad`, recording the gradients at the frontier for W."""

    def recorder(node: Node):
        def hook(grad_outputs):
            branches.captured[node] = tuple(grad_outputs)

        return hook

    handles = [node.register_prehook(recorder(node)) for node in branches.frontier]
    try:
        torch.autograd.backward(outputs, grads, inputs=xs, retain_graph=True)
    finally:
        for handle in handles:
            handle.remove()


def backward_weight(branches: WeightBranches) -> None:
    """W: from each frontier node along its leaving edges only, then down the branches to the parameters."""
    roots: list[GradientEdge] = []
    root_grads: list[torch.Tensor] = []
    for node, edges in branches.leaving.items():
        captured = branches.captured.get(node)
        if captured is None:
            continue  # no gradient reached this node in B (e.g. an unused output)
        outs = [(GradientEdge(node, i), g) for i, g in enumerate(captured) if g is not None]
        if not outs:
            continue
        grads = torch.autograd.grad(
            [e for e, _ in outs],
            inputs=[GradientEdge(n, nr) for n, nr in edges],
            grad_outputs=[g for _, g in outs],
            retain_graph=True,
            allow_unused=True,
        )
        for (n, nr), g in zip(edges, grads):
            if g is not None:
                roots.append(GradientEdge(n, nr))
                root_grads.append(g)
    if roots:
        torch.autograd.backward(roots, root_grads, inputs=branches.params)
