"""Saved-tensor bytes of a Hugging Face decoder's layer kinds, as the executor's activation meter counts them.

The planner's analytic activation model (pipesynth/plan/costs.py) is checked
against this: the embedding, one decoder layer (optionally under full
recompute) and the head with its loss, each run forward on one microbatch
under `ActivationMeter.saving()`, parameters and buffers excluded. The
model is any `*ForCausalLM` with `.model.embed_tokens`, `.model.layers`,
`.model.rotary_emb`, `.model.norm` and `.lm_head` (Llama, Mistral, Qwen2);
transformers itself is not imported here. `split_backward_bytes` measures
what the executor's split B leaves for W, to compare with the model's
kept-for-W bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.graph import get_gradient_edge
from torch.utils.checkpoint import checkpoint

from pipesynth.runtime.llama import norm_grads_in_b
from pipesynth.runtime.memory import ActivationMeter
from pipesynth.runtime.passes import graph_split_params, input_backward, weight_backward
from pipesynth.runtime.split import make_splittable


def saved_bytes(fn: Callable[[], object], exclude: list[torch.Tensor], autocast: bool = False) -> int:
    """Bytes the forward `fn` leaves saved for its backward (read while its output is alive)."""
    meter = ActivationMeter()
    meter.exclude(exclude)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), meter.saving():
        out = fn()  # noqa: F841 - the graph (and what it saved) lives while `out` does
    return meter.level


def layer_kind_bytes(
    model: torch.nn.Module, microbatch_size: int, seq_len: int, *, autocast: bool = False, recompute: bool = False
) -> dict[str, int]:
    """Saved bytes of the embedding, decoder layer 0 and the head + cross-entropy loss, on CPU."""
    inner = model.model
    vocab = model.lm_head.out_features
    exclude = [*model.parameters(), *model.buffers()]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (microbatch_size, seq_len), generator=gen)
    targets = torch.randint(0, vocab, (microbatch_size, seq_len), generator=gen)
    hidden = inner.embed_tokens(ids).detach().requires_grad_(True)
    rope = inner.rotary_emb(hidden, torch.arange(seq_len)[None])  # position ids (1, s), as the model builds them
    layer = inner.layers[0]

    def decoder() -> torch.Tensor:
        if recompute:
            return checkpoint(lambda x: layer(x, position_embeddings=rope), hidden, use_reentrant=False)
        return layer(hidden, position_embeddings=rope)

    def head() -> torch.Tensor:
        logits = model.lm_head(inner.norm(hidden))
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    return {
        "embedding": saved_bytes(lambda: inner.embed_tokens(ids), exclude, autocast),
        "decoder": saved_bytes(decoder, exclude, autocast),
        "head": saved_bytes(head, exclude, autocast),
    }


class _RotaryLayer(torch.nn.Module):
    """A decoder layer that takes the hidden state alone (computing its rotary cos/sin), as a stage does."""

    def __init__(self, layer: torch.nn.Module, rotary: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.rotary = rotary

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        return self.layer(hidden, position_embeddings=self.rotary(hidden, positions))


def split_backward_bytes(
    model: torch.nn.Module, microbatch_size: int, seq_len: int, *, autocast: bool = False
) -> tuple[int, int]:
    """Bytes decoder layer 0 holds after F and after the executor's split B (what W still needs), on CPU.

    The layer runs as a pipeline stage does (llama.LlamaStage): its Linear modules switched to their
    split twins in place (make_splittable), its RMSNorm weight gradients computed in B, and B is the
    executor's own `input_backward` on the output's gradient edge; F and B under bf16 autocast when
    `autocast`, as `pipesynth train --precision bf16` runs them.
    """
    inner = model.model
    stage = norm_grads_in_b(make_splittable(_RotaryLayer(inner.layers[0], inner.rotary_emb)))
    meter = ActivationMeter()
    meter.exclude([*stage.parameters(), *stage.buffers()])
    dtype = inner.embed_tokens.weight.dtype
    x = torch.randn(microbatch_size, seq_len, inner.config.hidden_size, dtype=dtype, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with meter.saving():
            out = stage(x)
        after_f = meter.level
        grad = torch.ones_like(out)
        deferred = input_backward([get_gradient_edge(out)], [grad], [x], graph_split_params(stage), meter.hold)
        del out, grad
        after_b = meter.level
        weight_backward(*deferred)
    return after_f, after_b
