"""Split backward: B computes input gradients, W the weight gradients, no work done twice.

The layers that hold almost all weights and weight-gradient work (Linear,
Embedding) get a backward that, while `deferring(queue)` is active, returns only the input
gradient and appends the weight-gradient product to `queue` as a closure; W
runs the closures. The closure keeps what the product needs (the layer input
and the output gradient) and nothing else, so everything else B used is
freed by autograd as soon as B ends (docs/design.md section 7). Outside
`deferring`, the same layers compute both gradients at once (fused backward).

`make_splittable(module)` switches the plain torch layers of a module to
these subclasses in place (same parameters, same state dict).

Under torch.autocast a split Linear casts its input to the autocast dtype
itself and saves that cast input (as autocast's own linear does; the weight's
cast copy comes from autocast's cache in F and is cast again in B); weight
gradients are cast to the parameter's dtype when they land in `.grad`
(gradients keep the parameters' dtype).

LayerNorm is left alone on purpose: its weight gradient is an elementwise
product and a sum (next to no time), but deferring it would keep its input
and output gradient alive until W. Computing it in B lets B free both: on a
transformer block that is the difference between B freeing memory and B
adding some (the held output gradients of the Linears are new memory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from pipesynth.runtime.memory import unpack

WeightGradTask = Callable[[], None]

_queue: list[WeightGradTask] | None = None
# Wraps tensors a deferred product keeps alive, so the activation meter counts them.
_keep: Callable[[torch.Tensor], object] = lambda t: t  # noqa: E731


@contextmanager
def deferring(queue: list[WeightGradTask], keep: Callable[[torch.Tensor], object] | None = None) -> Iterator[None]:
    """Within this block, split layers defer their weight gradients into `queue`.

    A plain global (not thread-local): on GPUs autograd runs backward on its
    own device threads, and one process runs one backward at a time.
    """
    global _queue, _keep
    previous = _queue, _keep
    _queue, _keep = queue, keep or (lambda t: t)
    try:
        yield
    finally:
        _queue, _keep = previous


def accumulate(param: torch.Tensor, grad: torch.Tensor) -> None:
    """Add a gradient into `param.grad` as autograd would (in the parameter's dtype: under autocast a
    product may come out in the lower precision)."""
    grad = grad.detach().to(param.dtype)
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)


def defer_weight_grad(task: Callable[..., None], *tensors: torch.Tensor) -> bool:
    """Queue `task(*tensors)` for W if a B is deferring; say whether it did.

    W needs the values only: a saved input unpacked in B carries its grad_fn,
    and a product of it in W would be recorded by autograd, so adding it into
    an existing .grad would make .grad hold the stage's graph (and, after a
    graph-split B, its retained activations) until the next zero_grad.
    """
    if _queue is None:
        return False
    kept = [_keep(t.detach()) for t in tensors]
    _queue.append(lambda: task(*[unpack(k) for k in kept]))
    return True


def _linear_weight_grads(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, g: torch.Tensor) -> None:
    g2 = g.reshape(-1, g.shape[-1])
    if weight.requires_grad:
        accumulate(weight, g2.t().mm(x.reshape(-1, x.shape[-1])))
    if bias is not None and bias.requires_grad:
        accumulate(bias, g2.sum(0))


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype torch.autocast casts a linear to on this device type, or None when it is off."""
    if device_type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        cast = _autocast_dtype(x.device.type) if x.dtype != torch.float64 else None  # autocast leaves float64
        if cast is not None:  # autocast's own linear: compute (and save the input) in the lower precision
            x = x.to(cast)
        # Parameters ride on ctx, not save_for_backward: W must add into these very objects.
        ctx.save_for_backward(x)
        ctx.weight, ctx.bias, ctx.has_bias, ctx.cast = weight, bias, bias is not None, cast
        return F.linear(x, weight, bias)  # under autocast: the weight's cast copy comes from autocast's cache

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        weight, bias = ctx.weight, ctx.bias
        if ctx.cast is not None:
            g = g.to(ctx.cast)
        grad_x = g.matmul(weight.to(g.dtype)) if ctx.needs_input_grad[0] else None
        wants_weights = ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2])
        if not wants_weights or defer_weight_grad(lambda x, g: _linear_weight_grads(weight, bias, x, g), x, g):
            return grad_x, None, None
        g2 = g.reshape(-1, g.shape[-1])
        grad_w = g2.t().mm(x.reshape(-1, x.shape[-1])).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = g2.sum(0).to(bias.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def _embedding_weight_grad(emb: nn.Embedding, idx: torch.Tensor, g: torch.Tensor) -> None:
    accumulate(emb.weight, _embedding_grad(emb, idx, g))


def _embedding_grad(emb: nn.Embedding, idx: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    padding = -1 if emb.padding_idx is None else emb.padding_idx
    return torch.ops.aten.embedding_dense_backward(g, idx, emb.num_embeddings, padding, emb.scale_grad_by_freq)


class _EmbeddingFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, weight, emb):  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.emb = emb
        return F.embedding(idx, weight, emb.padding_idx, None, 2.0, emb.scale_grad_by_freq, False)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        emb = ctx.emb
        if defer_weight_grad(lambda i, g: _embedding_weight_grad(emb, i, g), idx, g):
            return None, None, None
        return None, _embedding_grad(emb, idx, g), None


class SplitLinear(nn.Linear):
    """nn.Linear whose weight gradient can be deferred to W."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LinearFn.apply(x, self.weight, self.bias)


class SplitEmbedding(nn.Embedding):
    """nn.Embedding (no max_norm, dense) whose weight gradient can be deferred to W."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return _EmbeddingFn.apply(idx, self.weight, self)


def defers_weights(node: object) -> bool:
    """Whether an autograd node belongs to a split layer (which queues its weight gradients in B)."""
    return getattr(node, "_forward_cls", None) in (_LinearFn, _EmbeddingFn)


_SPLIT_CLASSES: dict[type, type] = {nn.Linear: SplitLinear, nn.Embedding: SplitEmbedding}
SPLIT_LAYERS = tuple(_SPLIT_CLASSES.values())


def defers_own_weights(module: nn.Module) -> bool:
    """Whether a module queues its own weight gradients during a deferring B (a split layer, or a
    module that says so with a true `defers_weight_grads` attribute), so no graph split is needed."""
    return isinstance(module, SPLIT_LAYERS) or getattr(module, "defers_weight_grads", False) is True


# Layers whose (cheap) weight gradients are computed in B by plain autograd.
WEIGHTS_IN_B = (nn.LayerNorm, nn.RMSNorm)


def weight_grads_in_b(module: nn.Module) -> bool:
    """Whether B computes a module's own (cheap, elementwise) weight gradients: a LayerNorm or RMSNorm,
    or a module that says so with a true `weight_grads_in_b` attribute (e.g. a model's own RMSNorm)."""
    return isinstance(module, WEIGHTS_IN_B) or getattr(module, "weight_grads_in_b", False) is True


def make_splittable(module: nn.Module) -> nn.Module:
    """Switch exact nn.Linear / nn.Embedding submodules to their split twins, in place.

    Only layers whose type is exactly the torch class are switched (a subclass
    may override forward); embeddings with max_norm or sparse gradients are
    left alone. Returns `module`.
    """
    for sub in module.modules():
        twin = _SPLIT_CLASSES.get(type(sub))
        if twin is None:
            continue
        if isinstance(sub, nn.Embedding) and (sub.max_norm is not None or sub.sparse):
            continue
        sub.__class__ = twin
    return module
