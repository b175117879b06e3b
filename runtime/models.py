"""Models to run pipelines on: a layer splitter, a tiny GPT, and synthetic data.

The same seed gives the same full model whatever the stage count: every rank
builds the whole model and keeps its stages, so schedules with 4 or 8 stages
(and the unpipelined reference) train the very same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipesynth.errors import PipesynthError


def even_counts(layers: int, stages: int) -> list[int]:
    """Layers per stage, as even as possible (earlier stages get the extra ones)."""
    if stages < 1 or layers < stages:
        raise PipesynthError(f"cannot split {layers} layers into {stages} stages (each needs at least one)")
    base, extra = divmod(layers, stages)
    return [base + (1 if s < extra else 0) for s in range(stages)]


def split_layers(layers: Sequence[nn.Module], counts: Sequence[int]) -> list[nn.Sequential]:
    """Cut a list of layers (or an nn.Sequential) into consecutive stages of `counts` layers."""
    layers = list(layers)
    if sum(counts) != len(layers) or any(c < 1 for c in counts):
        raise PipesynthError(f"layer counts {list(counts)} do not cover the {len(layers)} layers (each at least 1)")
    stages, start = [], 0
    for c in counts:
        stages.append(nn.Sequential(*layers[start : start + c]))
        start += c
    return stages


#: The most parameters of a tiny model: every rank (and `profile`) builds the whole model on this machine.
MAX_TINY_PARAMS = 50_000_000
#: Most tokens (sequences x sequence length) in one microbatch: every local rank builds the whole batch on a CPU.
MAX_MICROBATCH_TOKENS = 65_536
#: Most values in one microbatch's hidden states through the tiny GPT (tokens x width x blocks): each block
#: saves about 17 such values per token and width for its backward (two MLP tensors 4 wide, attention's inputs).
MAX_HIDDEN_VALUES = 2**24


def check_tokens(sequences: int, seq_len: int, field: str) -> None:
    """At most MAX_MICROBATCH_TOKENS tokens in a microbatch of `sequences` sequences of `seq_len` tokens."""
    if sequences * seq_len > MAX_MICROBATCH_TOKENS:
        raise PipesynthError(
            f"{field}: {sequences} x {seq_len} tokens per microbatch; at most {MAX_MICROBATCH_TOKENS:,} on this "
            "machine (every rank builds the whole batch)"
        )


@dataclass(frozen=True)
class GPTConfig:
    vocab: int = 64
    seq_len: int = 32
    dim: int = 64
    heads: int = 4
    blocks: int = 8

    @property
    def parameters(self) -> int:
        """The parameters of `tiny_gpt(self)` (tests count the built model's)."""
        d, v = self.dim, self.vocab
        block = 12 * d * d + 13 * d  # two LayerNorms, qkv, proj, fc, out (with biases)
        return (v + self.seq_len) * d + self.blocks * block + 2 * d + d * v + v

    def check(self, sequences: int = 1) -> None:
        """Sizes this machine can build and run a microbatch of `sequences` through; a PipesynthError naming
        the field and the limit, before anything is allocated."""
        for name in ("vocab", "seq_len", "dim", "heads", "blocks"):
            if getattr(self, name) < 1:
                raise PipesynthError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise PipesynthError(f"dim: {self.dim} is not a multiple of the tiny GPT's {self.heads} heads")
        check_tokens(sequences, self.seq_len, "microbatch_size")
        if self.parameters > MAX_TINY_PARAMS:
            raise PipesynthError(
                f"blocks, dim, seq_len: {self.blocks} blocks of width {self.dim} and {self.seq_len} positions make "
                f"{self.parameters:,} parameters; the tiny GPT has at most {MAX_TINY_PARAMS:,} (the whole model is "
                "built on this machine)"
            )
        values = sequences * self.seq_len * self.dim * self.blocks
        if values > MAX_HIDDEN_VALUES:
            raise PipesynthError(
                f"microbatch_size, seq_len, dim, blocks: {sequences} x {self.seq_len} tokens x width {self.dim} x "
                f"{self.blocks} blocks make {values:,} hidden values per microbatch, each saved several times for "
                f"the backward; at most {MAX_HIDDEN_VALUES:,}"
            )


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and an MLP, each with a residual."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.fc = nn.Linear(cfg.dim, 4 * cfg.dim)
        self.out = nn.Linear(4 * cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Embed(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab, cfg.dim)
        self.pos = nn.Embedding(cfg.seq_len, cfg.dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))


class Head(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(cfg.dim)
        self.lm = nn.Linear(cfg.dim, cfg.vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(self.ln(x))


def tiny_gpt(cfg: GPTConfig, seed: int, dtype: torch.dtype = torch.float32) -> list[nn.Module]:
    """The tiny GPT as a list of layers: embedding, `cfg.blocks` blocks, head (deterministic in `seed`)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [Embed(cfg), *(Block(cfg) for _ in range(cfg.blocks)), Head(cfg)]
    return [layer.to(dtype) for layer in layers]


def gpt_stages(layers: list[nn.Module], stages: int) -> list[nn.Sequential]:
    """Split the GPT's blocks evenly; the embedding joins the first stage, the head the last."""
    blocks = layers[1:-1]
    counts = even_counts(len(blocks), stages)
    counts[0] += 1
    counts[-1] += 1
    if stages == 1:
        counts = [len(layers)]
    return split_layers(layers, counts)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class MarkovText:
    """Synthetic token streams from a fixed random sparse Markov chain: learnable, so the loss falls.

    Each token has 4 likely successors; the best possible loss is about ln 4 ~ 1.4
    against ln(vocab) for a model that has learnt nothing.
    """

    def __init__(self, vocab: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        logits = torch.full((vocab, vocab), -4.0)
        for a in range(vocab):
            logits[a, torch.randperm(vocab, generator=gen)[:4]] = 2.0
        self.probs = logits.softmax(-1)
        self.vocab = vocab
        self.seed = seed

    def batch(self, step: int, batch: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets for step `step`, the same on every rank."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        tokens = torch.empty(batch, seq_len + 1, dtype=torch.int64)
        tokens[:, 0] = torch.randint(self.vocab, (batch,), generator=gen)
        for t in range(seq_len):
            tokens[:, t + 1] = torch.multinomial(self.probs[tokens[:, t]], 1, generator=gen).squeeze(1)
        return tokens[:, :-1], tokens[:, 1:]
