"""A Hugging Face Llama (transformers' own LlamaForCausalLM) cut into pipeline stages.

`tiny_llama(seed)` builds a small LlamaForCausalLM with random weights (no
download); `llama_stages(model, layers_per_stage)` cuts it by explicit layer
counts: stage 0 holds the embedding (and computes the rotary position
embeddings and the causal mask), the last the final norm, the LM head, and
the loss is taken on its logits; every stage holds its count of decoder
layers (0 allowed on the first and the last: an embedding-only or head-only
stage). Between stages travel the hidden states (with their gradient), the
rotary cos and sin and the causal mask (forward only): a tuple of tensors,
which both our executor and torch.distributed.pipelining pass on. The stages
share the model's modules, so the model itself (its own forward) is the
single-process reference.

transformers is imported here only: `pipesynth` and the rest of the runtime
never need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pipesynth.errors import PipesynthError


@dataclass(frozen=True)
class LlamaSize:
    """The sizes of a tiny Llama (the defaults train in seconds on a CPU)."""

    vocab: int = 64
    hidden: int = 64
    intermediate: int = 128
    layers: int = 8
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 256


def tiny_llama(size: LlamaSize, seed: int, dtype: torch.dtype = torch.float32):
    """A LlamaForCausalLM with random weights (deterministic in `seed`), eager attention, untied head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.max_positions,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"  # a float mask tensor between stages, float64 allowed
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


class LlamaStage(nn.Module):
    """Decoder layers of a Llama, with the embedding (first stage) and/or the norm and head (last stage).

    First stage: forward(input_ids, attention_mask=None). Others:
    forward(hidden_states, cos, sin, mask). Returns (hidden_states, cos,
    sin, mask), or the logits on the last stage.
    """

    def __init__(self, model, layers: Sequence[nn.Module], first: bool, last: bool) -> None:
        super().__init__()
        inner = model.model
        self.config = model.config
        self.embed_tokens = inner.embed_tokens if first else None
        self.rotary_emb = inner.rotary_emb if first else None
        self.layers = nn.ModuleList(layers)
        self.norm = inner.norm if last else None
        self.lm_head = model.lm_head if last else None
        for module in self.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.weight_grads_in_b = True  # an elementwise weight gradient: B computes it (split.py)

    def forward(self, *args: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if self.embed_tokens is not None:
            hidden, cos, sin, mask = self._embed(args[0], attention_mask)
        else:
            hidden, cos, sin, mask = args
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin))
        if self.lm_head is not None:
            return self.lm_head(self.norm(hidden))
        return hidden, cos, sin, mask

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        from transformers.masking_utils import create_causal_mask

        hidden = self.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        mask = create_causal_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None, position_ids=positions
        )
        cos, sin = self.rotary_emb(hidden, positions)
        return hidden, cos, sin, mask


def llama_stages(model, layers_per_stage: Sequence[int]) -> list[LlamaStage]:
    """Cut `model` (a LlamaForCausalLM) into stages of `layers_per_stage` decoder layers each, in order.

    The counts must add up to the model's layers; 0 is allowed on the first
    stage (embedding only) and the last (norm and head only), not between.
    """
    counts = list(layers_per_stage)
    layers = list(model.model.layers)
    if not counts or sum(counts) != len(layers) or any(c < 0 for c in counts):
        raise PipesynthError(f"layers per stage {counts} do not add up to the model's {len(layers)} decoder layers")
    empty = [s for s, c in enumerate(counts) if c == 0 and 0 < s < len(counts) - 1]
    if empty:
        raise PipesynthError(f"layers per stage: stage {empty[0]} has no decoder layer (only the first and last may)")
    stages, start = [], 0
    for s, c in enumerate(counts):
        stages.append(LlamaStage(model, layers[start : start + c], first=s == 0, last=s == len(counts) - 1))
        start += c
    return stages


class LlamaLM(nn.Module):
    """The whole model as one module, input ids -> logits: its own forward, the single-process reference."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits
