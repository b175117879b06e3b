"""A Hugging Face Llama (transformers' own LlamaForCausalLM) cut into pipeline stages.

`tiny_llama(size, seed)` builds a small LlamaForCausalLM with random weights
(no download; `examples/tiny-llama-config.json` is the default size as a
config.json, which `pipesynth plan --hf-config` reads, and `llama_size` reads
a plan's model back); `llama_stages(model, layers_per_stage)` cuts it by
explicit layer counts or by a plan (`pipesynth plan`): stage 0 holds the embedding (and computes the rotary position
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
from pipesynth.plan.costs import model_params
from pipesynth.plan.partition import Partition, check_partition
from pipesynth.plan.plan_file import PlanSection, layers_per_stage
from pipesynth.runtime.models import MAX_TINY_PARAMS


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
    head_dim: int | None = None  # None: hidden // heads
    attention_bias: bool = False
    mlp_bias: bool = False


def llama_size(plan: PlanSection) -> LlamaSize:
    """The size of the Llama a plan file describes (its `model_config`), to build and train on this machine.

    Refused, naming the field: another architecture, tied embeddings (the
    embedding and the head on two stages would need their gradients summed
    across ranks, which the executor does not do) and models over
    MAX_TINY_PARAMS parameters.
    """
    model = plan.model
    if model.model_type != "llama":
        raise PipesynthError(
            f"plan.model_config.model_type: tiny-llama builds a llama; this plan is for a {model.model_type} model"
        )
    if model.tied_embeddings:
        raise PipesynthError(
            "plan.model_config.tie_word_embeddings: tied embeddings are not supported by the executor (the "
            "embedding's and the head's gradients would need summing across ranks)"
        )
    params = model_params(model)
    if params > MAX_TINY_PARAMS:
        raise PipesynthError(
            f"plan.model_config: {model.name} has {params:,} parameters; tiny-llama builds the whole model on "
            f"every rank, at most {MAX_TINY_PARAMS:,} (plan a small config such as examples/tiny-llama-config.json)"
        )
    return LlamaSize(
        vocab=model.vocab,
        hidden=model.hidden,
        intermediate=model.intermediate,
        layers=model.layers,
        heads=model.heads,
        kv_heads=model.kv_heads,
        max_positions=max(LlamaSize.max_positions, plan.training.seq_len),
        head_dim=model.head_dim,
        attention_bias=model.o_bias,
        mlp_bias=model.mlp_bias,
    )


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
        head_dim=size.head_dim,
        attention_bias=size.attention_bias,
        mlp_bias=size.mlp_bias,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"  # a float mask tensor between stages, float64 allowed
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


def norm_grads_in_b(module: nn.Module) -> nn.Module:
    """Mark the model's own RMSNorms (transformers' class, not nn.RMSNorm) so that a split B computes
    their elementwise weight gradients (split.weight_grads_in_b) instead of splitting them along the
    graph, which would keep the norms' inputs until W. Returns `module`."""
    for sub in module.modules():
        if type(sub).__name__.endswith("RMSNorm"):
            sub.weight_grads_in_b = True
    return module


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
        norm_grads_in_b(self)

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


def llama_stages(model, split: Sequence[int] | PlanSection) -> list[LlamaStage]:
    """Cut `model` (a LlamaForCausalLM) into stages of decoder layers: `split` gives the count per stage,
    in order, or is a plan (`load_plan(path)[1]`), whose decoder layers must be the model's.

    The counts must add up to the model's layers; 0 is allowed on the first
    stage (embedding only) and the last (norm and head only), not between.
    """
    layers = list(model.model.layers)
    counts = list(layers_per_stage(split, len(layers)) if isinstance(split, PlanSection) else split)
    check_partition(Partition(tuple(counts)), len(layers))
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
