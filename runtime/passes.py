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
from pipesynth.runtime.split import WEIGHTS_IN_B, WeightGradTask, deferring, defers_own_weights, defers_weights


def graph_split_params(module: nn.Module) -> list[torch.Tensor] | None:
    """The parameters of a (splittable) stage whose B/W split must follow the autograd graph, or None.

    None when the split layers and the LayerNorms (whose weight gradient B
    computes) hold every trainable parameter: deferring alone splits B and W.
    """
    split = {id(p) for sub in module.modules() if defers_own_weights(sub) for p in sub.parameters()}
    in_b = {id(p) for sub in module.modules() if isinstance(sub, WEIGHTS_IN_B) for p in sub.parameters()}
    params = [p for p in module.parameters() if p.requires_grad and id(p) not in split]
    return params if any(id(p) not in in_b for p in params) else None


def input_backward(
    out: torch.Tensor | GradientEdge,
    grads: list[torch.Tensor] | None,
    x: torch.Tensor | None,
    params: list[torch.Tensor] | None,
    hold: Callable[[torch.Tensor], object] | None,
) -> tuple[list[WeightGradTask], WeightBranches | None]:
    """A split B: input gradients now; the weight-gradient work queued (and planned) for W.

    `params`: the stage's graph-split parameters (graph_split_params), split
    along the graph when the stage has a floating input `x` to split on.
    """
    queue: list[WeightGradTask] = []
    branches = None
    if params is not None and x is not None:
        root = out.node if isinstance(out, GradientEdge) else out.grad_fn
        branches = find_weight_branches(root, x, params, defers_weights)
    with deferring(queue, hold):
        if branches is None:
            torch.autograd.backward([out], grads)
        else:
            backward_input(branches, [out], grads, x)
    return queue, branches


def weight_backward(queue: list[WeightGradTask], branches: WeightBranches | None) -> None:
    """The W of a split B: the deferred products, then the graph-split weight gradients."""
    while queue:
        queue.pop(0)()
    if branches is not None:
        backward_weight(branches)
