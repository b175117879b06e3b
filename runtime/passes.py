"""The B and W halves of a split backward, shared by the executor and the profiler.

B computes the input gradients now and queues what W needs; W drains the
queue. Split layers (split.py) defer their weight-gradient products; any other
parameter is split along the autograd graph (graph_split.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.graph import GradientEdge

from pipesynth.runtime.graph_split import WeightBranches, backward_input, backward_weight, find_weight_branches
from pipesynth.runtime.split import WeightGradTask, deferring, defers_own_weights, defers_weights, weight_grads_in_b


def graph_split_params(module: nn.Module) -> list[torch.Tensor] | None:
    """The parameters of a (splittable) stage whose B/W split must follow the autograd graph, or None.

    None when the split layers and the norms (whose weight gradient B
    computes, split.weight_grads_in_b) hold every trainable parameter:
    deferring alone splits B and W.
    """
    split = {id(p) for sub in module.modules() if defers_own_weights(sub) for p in sub.parameters()}
    in_b = {id(p) for sub in module.modules() if weight_grads_in_b(sub) for p in sub.parameters()}
    params = [p for p in module.parameters() if p.requires_grad and id(p) not in split]
    return params if any(id(p) not in in_b for p in params) else None


def input_backward(
    outs: list[torch.Tensor | GradientEdge],
    grads: list[torch.Tensor] | None,
    xs: list[torch.Tensor],
    params: list[torch.Tensor] | None,
    hold: Callable[[torch.Tensor], object] | None,
) -> tuple[list[WeightGradTask], WeightBranches | None]:
    """A split B: input gradients now; the weight-gradient work queued (and planned) for W.

    `outs` (tensors or their gradient edges) take `grads` (None: scalars, as
    a loss). `params`: the stage's graph-split parameters
    (graph_split_params), split along the graph when the stage has floating
    inputs `xs` (requiring grad) to split on.
    """
    queue: list[WeightGradTask] = []
    branches = None
    if params is not None and xs:
        roots = [out.node if isinstance(out, GradientEdge) else out.grad_fn for out in outs]
        branches = find_weight_branches(roots, xs, params, defers_weights)
    with deferring(queue, hold):
        if branches is None:
            torch.autograd.backward(outs, grads)
        else:
            backward_input(branches, outs, grads, xs)
    return queue, branches


def weight_backward(queue: list[WeightGradTask], branches: WeightBranches | None) -> None:
    """The W of a split B: the deferred products, then the graph-split weight gradients."""
    while queue:
        queue.pop(0)()
    if branches is not None:
        backward_weight(branches)
