"""A training job as users describe it: a Hugging Face `config.json`, training settings, the GPUs.

The model is read from the `config.json` of a dense Llama-family decoder
(Llama, Mistral, Qwen2: RMSNorm, rotary attention with grouped KV heads, a
SwiGLU MLP) with a strict reader that names the field at fault; nothing
from `transformers` is needed to read it. Training settings and the device
are plain dataclasses that check themselves (docs/design.md section 9).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pipesynth.errors import PipesynthError
from pipesynth.formats.files import read_text
from pipesynth.formats.json_text import parse_json

#: model_type -> whether q, k, v projections carry a bias by construction (Qwen2 does).
ARCHITECTURES = {"llama": False, "mistral": False, "qwen2": True}
#: Fields that mark a mixture-of-experts model (Mixtral, Qwen-MoE, DeepSeek, ...).
MOE_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok")
PRECISIONS = ("bf16-autocast", "bf16", "fp32")
OPTIMIZERS = ("adam", "adamw", "sgd")
RECOMPUTE = ("none", "full")
ATTENTION = ("flash", "eager")
#: Most decoder layers a plan may have (the largest public models have under 200): the search, the split
#: and the plan object's per-layer names grow with the count, so a hostile config is refused at once.
MAX_DECODER_LAYERS = 10_000


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a dense decoder-only transformer: everything the cost model needs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    name: str = "model"
    model_type: str = "llama"

    def __post_init__(self) -> None:
        if self.model_type not in ARCHITECTURES:
            supported = ", ".join(ARCHITECTURES)
            raise PipesynthError(f"model.model_type: unknown {self.model_type!r}; supported: {supported}")
        for field in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "vocab"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PipesynthError(f"model.{field}: expected a positive integer, got {value!r}")
        if self.layers > MAX_DECODER_LAYERS:
            raise PipesynthError(
                f"model.layers: {self.layers} decoder layers; pipesynth plans at most {MAX_DECODER_LAYERS}"
            )
        if self.heads % self.kv_heads:
            raise PipesynthError(
                f"model.kv_heads: {self.kv_heads} does not divide the {self.heads} attention heads "
                "(grouped-query attention)"
            )
        if self.head_dim % 2:
            raise PipesynthError(f"model.head_dim: rotary embeddings need an even head size, got {self.head_dim}")

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class Training:
    """How the model is trained: batch shape, numerics, optimizer and memory savers.

    precision: `bf16-autocast` (fp32 weights, gradients and optimizer states,
    torch.autocast to bf16), `bf16` (everything in bf16), `fp32`.
    optimizer: `adam`/`adamw` (two states per parameter), `sgd` (with momentum: one).
    recompute: `none`, or `full` (each decoder layer recomputed in the backward).
    zero: data-parallel ranks the optimizer states are sharded over (ZeRO-1; 1 = none).
    attention: `flash` (a fused kernel: no seq x seq matrix kept) or `eager`.
    """

    seq_len: int
    microbatch_size: int
    microbatches: int
    precision: str = "bf16-autocast"
    optimizer: str = "adamw"
    recompute: str = "none"
    zero: int = 1
    attention: str = "flash"

    def __post_init__(self) -> None:
        for field in ("seq_len", "microbatch_size", "microbatches", "zero"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PipesynthError(f"{field}: expected a positive integer, got {value!r}")
        for field, known in (
            ("precision", PRECISIONS),
            ("optimizer", OPTIMIZERS),
            ("recompute", RECOMPUTE),
            ("attention", ATTENTION),
        ):
            if getattr(self, field) not in known:
                raise PipesynthError(f"{field}: unknown {getattr(self, field)!r}; expected one of {', '.join(known)}")

    @property
    def tokens(self) -> int:
        """Tokens in one microbatch."""
        return self.seq_len * self.microbatch_size


@dataclass(frozen=True)
class Device:
    """One GPU and its link to the pipeline neighbours.

    tflops: peak dense bf16 TFLOP/s; mfu: the share of it the matmuls reach.
    memory: bytes per GPU; reserve: bytes kept free for the CUDA context,
    allocator slack and communication buffers (not planned). bandwidth
    (bytes/s) and latency (s) of a point-to-point send between neighbours;
    hbm: memory bandwidth (bytes/s) for the memory-bound embedding and loss.
    """

    tflops: float
    mfu: float
    memory: float
    reserve: float = 0.0
    bandwidth: float = 50e9
    latency: float = 10e-6
    hbm: float = 3.35e12

    def __post_init__(self) -> None:
        for field in ("tflops", "memory", "bandwidth", "hbm"):
            if not getattr(self, field) > 0:
                raise PipesynthError(f"{field}: must be positive, got {getattr(self, field)!r}")
        if not 0 < self.mfu <= 1:
            raise PipesynthError(f"mfu: must be in (0, 1], got {self.mfu!r}")
        if self.latency < 0 or self.reserve < 0:
            raise PipesynthError("latency and reserve must be non-negative")
        if self.reserve >= self.memory:
            raise PipesynthError(f"reserve: {self.reserve:g} bytes leave nothing of the {self.memory:g} bytes per GPU")

    @property
    def flops(self) -> float:
        """Sustained FLOP/s of the matmuls."""
        return self.tflops * 1e12 * self.mfu

    @property
    def budget(self) -> float:
        """Bytes per GPU the plan may use: weights, gradients, optimizer states and activations."""
        return self.memory - self.reserve


@dataclass(frozen=True)
class Job:
    """Everything a plan depends on: the model, how it is trained, the GPUs."""

    model: ModelShape
    training: Training
    device: Device
    gpus: int

    def __post_init__(self) -> None:
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
            raise PipesynthError(f"gpus: expected a positive integer, got {self.gpus!r}")


def _field(data: dict[str, Any], key: str, kind: type, where: str, default: Any = None, required: bool = True) -> Any:
    if key not in data or data[key] is None:
        if required:
            raise PipesynthError(f"{where}: missing field {key!r}")
        return default
    value = data[key]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if not ok:
        expected = {int: "an integer", bool: "true or false", str: "a string"}[kind]
        raise PipesynthError(f"{where}: field {key!r} must be {expected}, got {value!r}")
    if kind is int and value < 1:
        raise PipesynthError(f"{where}: field {key!r} must be positive, got {value}")
    return value


def model_from_hf_config(data: Any, where: str = "config.json") -> ModelShape:
    """A ModelShape from a Hugging Face config object, refusing what the cost model does not describe."""
    if not isinstance(data, dict):
        raise PipesynthError(f"{where}: expected a JSON object")
    model_type = _field(data, "model_type", str, where)
    if model_type not in ARCHITECTURES:
        raise PipesynthError(
            f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)} "
            "(dense decoders with RMSNorm, rotary attention and a SwiGLU MLP)"
        )
    moe = [key for key in MOE_FIELDS if data.get(key)]
    if moe:
        raise PipesynthError(
            f"{where}: {moe[0]}={data[moe[0]]!r} marks a mixture-of-experts model, which is not supported yet; "
            f"supported: dense {', '.join(ARCHITECTURES)} models"
        )
    act = _field(data, "hidden_act", str, where, default="silu", required=False)
    if act != "silu":
        raise PipesynthError(f"{where}: hidden_act {act!r} is not supported; the cost model knows SwiGLU (silu)")
    hidden = _field(data, "hidden_size", int, where)
    heads = _field(data, "num_attention_heads", int, where)
    head_dim = _field(data, "head_dim", int, where, default=None, required=False)
    if head_dim is None:
        if hidden % heads:
            raise PipesynthError(
                f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}; give head_dim"
            )
        head_dim = hidden // heads
    bias = _field(data, "attention_bias", bool, where, default=False, required=False)
    sizes = {
        "intermediate": _field(data, "intermediate_size", int, where),
        "layers": _field(data, "num_hidden_layers", int, where),
        "kv_heads": _field(data, "num_key_value_heads", int, where, default=heads, required=False),
        "vocab": _field(data, "vocab_size", int, where),
        "tied_embeddings": _field(data, "tie_word_embeddings", bool, where, default=False, required=False),
        "mlp_bias": _field(data, "mlp_bias", bool, where, default=False, required=False),
    }
    name = data.get("_name_or_path") or (data.get("architectures") or [model_type])[0]
    try:
        return ModelShape(
            hidden=hidden,
            heads=heads,
            head_dim=head_dim,
            qkv_bias=ARCHITECTURES[model_type] or bias,
            o_bias=bias,
            name=str(name),
            model_type=model_type,
            **sizes,
        )
    except PipesynthError as err:  # sizes that do not go together (e.g. KV heads that do not divide the heads)
        raise PipesynthError(f"{where}: {err}") from None


#: The `config.json` fields `hf_config` writes (what the cost model and a builder of the model need).
HF_CONFIG_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "hidden_act",
)


def hf_config(model: ModelShape) -> dict[str, Any]:
    """The `config.json` fields that describe `model`: `model_from_hf_config` reads them back to the same
    shape (the name aside), and transformers builds the model from them (the plan file keeps them)."""
    return {
        "model_type": model.model_type,
        "hidden_size": model.hidden,
        "intermediate_size": model.intermediate,
        "num_hidden_layers": model.layers,
        "num_attention_heads": model.heads,
        "num_key_value_heads": model.kv_heads,
        "head_dim": model.head_dim,
        "vocab_size": model.vocab,
        "tie_word_embeddings": model.tied_embeddings,
        "attention_bias": model.o_bias,
        "mlp_bias": model.mlp_bias,
        "hidden_act": "silu",
    }


def read_hf_config(path: str | os.PathLike[str]) -> ModelShape:
    """Read a `config.json` file with the strict JSON reader (see `model_from_hf_config`)."""
    return model_from_hf_config(parse_json(read_text(path), str(path)), where=str(path))
