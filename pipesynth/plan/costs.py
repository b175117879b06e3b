"""What each layer of a Llama-family model costs: pass times from FLOPs, bytes from the tensors it keeps.

Three layer kinds make the pipeline's list of layers: the embedding, the
decoder layers (all alike) and the head (final norm, output projection and
the cross-entropy loss). For one microbatch of T = b x s tokens:

* **FLOPs** (Narayanan et al. 2021, "Efficient Large-Scale Language Model
  Training on GPU Clusters Using Megatron-LM", appendix on floating-point operations: 24bsh^2 + 4bs^2h
  per layer forward, generalised here to grouped KV heads and a SwiGLU MLP):
  a matmul of an (n x k) by (k x m) matrix is 2nkm FLOPs. The decoder's
  projections cost 2T(h q + 2 h kv + q h + 3 h f) forward; the attention
  scores and their product with V cost 4 T s q forward over the whole square
  (eager) and half of that with a fused causal (flash) kernel, which skips
  the masked half. B (the input gradient) repeats the projection FLOPs and
  doubles the attention's (2.5x with a flash kernel, which recomputes the
  scores); W (the weight gradient) repeats the projection FLOPs; full
  recompute adds a forward to B. The head costs 2 T h V per pass. Time is
  FLOPs over peak x MFU; the embedding and the loss's softmax are
  memory-bound and cost their bytes over the memory bandwidth.
* **Activation bytes** after F follow Korthikanti et al. 2022, "Reducing
  Activation Recomputation in Large Transformer Models", section 4: count
  every tensor the forward saves for the backward (their 34sbh + 5as^2b for
  GPT-3 in 16-bit). We count them for the Hugging Face / PyTorch Llama layer
  as autograd sees it (docs/design.md section 9 lists every term), because
  the executor's activation meter counts exactly those saved tensors, once
  per storage: the RMSNorm's fp32 copy of its input, the rotary cos/sin, the
  projections' inputs, the attention's q, k, v, output and log-sum-exp (or
  the seq x seq probabilities without a fused kernel), the SwiGLU's three
  products, and, under autocast, the bf16 copies autocast makes of every
  matmul input and weight. With full recompute a layer keeps its input only.
* **Kept for W** (Qi et al. 2023, "Zero Bubble Pipeline Parallelism",
  Table 1: W needs each linear layer's input and output gradient, their
  32sbh per GPT layer): the projections' inputs and output gradients.
* **Static bytes**: parameters x (weight + gradient + optimizer-state bytes),
  the optimizer states (and fp32 master weights' share of them) divided by
  the ZeRO-1 data-parallel degree (Rajbhandari et al. 2020, "ZeRO", section 5.1).
* **P2P**: the hidden state, T x h in the residual stream's dtype (fp32 under
  autocast), over the link: latency + bytes / bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipesynth.core.problem import Problem
from pipesynth.errors import PipesynthError
from pipesynth.plan.job import Job, ModelShape, Training

KINDS = ("embedding", "decoder", "head")
#: Bytes of a target or token id (int64) and of a float32 value.
INDEX_BYTES = 8
FP32 = 4


@dataclass(frozen=True)
class LayerCost:
    """One layer of a kind, one microbatch: pass times (us) and bytes."""

    kind: str
    forward: float
    backward: float  # B: the input gradient (and the recompute, if any)
    weight: float  # W: the weight gradient
    activation: float  # saved tensors held once F has run (the meter's level)
    kept_for_w: float  # what W still needs once B has run
    params: int
    static: float  # weights + gradients + optimizer states, bytes
    flops: float  # F + B + W matmul FLOPs


@dataclass(frozen=True)
class ModelCosts:
    """The three layer kinds, the link between stages, and how many decoder layers there are."""

    embedding: LayerCost
    decoder: LayerCost
    head: LayerCost
    layers: int
    comm: float  # us per P2P send between stages
    p2p_bytes: float
    tied_bytes: float  # static bytes the embedding and head share when tied (held once per device)
    source: str = "analytic"

    def kind(self, item: int) -> LayerCost:
        """Layer `item` of the list [embedding, decoder x layers, head]."""
        if item == 0:
            return self.embedding
        return self.head if item == self.layers + 1 else self.decoder


def bytes_per_param(training: Training) -> float:
    """Weight + gradient + optimizer-state bytes of one parameter (states over the ZeRO-1 degree)."""
    states = 2 if training.optimizer in ("adam", "adamw") else 1
    if training.precision == "bf16":
        return 2 + 2 + 2 * states / training.zero
    return 4 + 4 + 4 * states / training.zero


def decoder_params(m: ModelShape) -> tuple[int, int]:
    """(matmul weights, all parameters) of one decoder layer."""
    weights = m.hidden * (2 * m.q_width + 2 * m.kv_width) + 3 * m.hidden * m.intermediate
    biases = (
        (m.q_width + 2 * m.kv_width) * m.qkv_bias + m.hidden * m.o_bias + (2 * m.intermediate + m.hidden) * m.mlp_bias
    )
    return weights, weights + biases + 2 * m.hidden


def model_params(m: ModelShape) -> int:
    """Parameters of the whole model: the decoder layers, the embedding and the head (one table when tied),
    the final norm."""
    return m.layers * decoder_params(m)[1] + m.vocab * m.hidden * (1 if m.tied_embeddings else 2) + m.hidden


def _dtypes(training: Training) -> tuple[int, int]:
    """Bytes of (the residual stream and norms, the matmul inputs and outputs)."""
    if training.precision == "bf16-autocast":
        return FP32, 2
    size = 2 if training.precision == "bf16" else FP32
    return size, size


def _norm_bytes(m: ModelShape, training: Training) -> float:
    """Per token, an RMSNorm as HF writes it: fp32 input copy, rsqrt, normalised input, and its
    output when the next matmul saves it as is (without autocast; autocast saves a bf16 copy instead)."""
    res, _ = _dtypes(training)
    out = 0 if training.precision == "bf16-autocast" else res * m.hidden
    return FP32 * m.hidden + FP32 + res * m.hidden + out


def decoder_activation(m: ModelShape, t: Training) -> float:
    """Bytes a decoder layer's forward saves for one microbatch (docs/design.md section 9)."""
    res, mm = _dtypes(t)
    tokens, s = t.tokens, t.seq_len
    if t.recompute == "full":
        return tokens * res * m.hidden
    autocast = t.precision == "bf16-autocast"
    per_token = 2 * _norm_bytes(m, t)
    if autocast:
        per_token += mm * 5 * m.hidden  # bf16 copies of the q, k, v, gate and up inputs
    if t.attention == "flash":
        per_token += mm * (2 * m.q_width + 2 * m.kv_width) + FP32 * m.heads  # q, k, v, out, log-sum-exp
    else:
        # q, keys and values repeated to every head, the output's contiguous copy; fp32 softmax
        # probabilities, and their copy in the matmul dtype (none in plain fp32).
        per_token += mm * 4 * m.q_width + FP32 * m.heads * s + (0 if t.precision == "fp32" else mm * m.heads * s)
    per_token += mm * 4 * m.intermediate  # gate output, its SiLU, up output, their product
    rope = 2 * s * m.head_dim * (FP32 if autocast else res)  # cos and sin, shared by the batch
    weights = mm * decoder_params(m)[0] if autocast else 0  # autocast's bf16 weight copies
    return tokens * per_token + rope + weights


def decoder_kept_for_w(m: ModelShape, t: Training) -> float:
    """Bytes W needs after B: every projection's input and output gradient."""
    _, mm = _dtypes(t)
    copies = 5 if t.precision == "bf16-autocast" else 2  # inputs shared by q/k/v and gate/up without autocast
    inputs = copies * m.hidden + m.q_width + m.intermediate
    grads = m.q_width + 2 * m.kv_width + m.hidden + 2 * m.intermediate + m.hidden
    return t.tokens * mm * (inputs + grads)


def head_activation(m: ModelShape, t: Training) -> float:
    """Final norm, the projection's input (a bf16 copy and the weight's under autocast), fp32 log-softmax, targets."""
    _, mm = _dtypes(t)
    per_token = _norm_bytes(m, t) + FP32 * m.vocab + INDEX_BYTES
    weights = 0.0
    if t.precision == "bf16-autocast":
        per_token += mm * m.hidden
        weights = mm * m.vocab * m.hidden
    return t.tokens * per_token + weights + FP32  # + the loss's fp32 weight total


def model_costs(job: Job) -> ModelCosts:
    """The analytic costs of every layer kind for one microbatch of `job`."""
    m, t, dev = job.model, job.training, job.device
    res, mm = _dtypes(t)
    tokens, s = t.tokens, t.seq_len
    per_param = bytes_per_param(t)
    us = 1e6 / dev.flops
    hbm_us = 1e6 / dev.hbm

    weights, params = decoder_params(m)
    linear = 2 * tokens * weights
    attention = 4 * tokens * s * m.q_width * (0.5 if t.attention == "flash" else 1.0)
    attention_b = attention * (2.5 if t.attention == "flash" else 2.0)
    recompute = (linear + attention) if t.recompute == "full" else 0.0
    after_f = decoder_activation(m, t)
    kept = decoder_kept_for_w(m, t)
    decoder = LayerCost(
        "decoder",
        forward=linear * us + attention * us,
        backward=(linear + attention_b + recompute) * us,
        weight=linear * us,
        activation=after_f,
        kept_for_w=kept,
        params=params,
        static=params * per_param,
        flops=2 * linear + attention + attention_b + linear + recompute,
    )

    table = m.vocab * m.hidden
    hidden_bytes = tokens * m.hidden * res
    embedding = LayerCost(
        "embedding",
        forward=2 * hidden_bytes * hbm_us,  # gather: read rows, write the hidden state
        backward=0.0,
        weight=2 * hidden_bytes * hbm_us,  # scatter-add of the output gradient
        activation=tokens * INDEX_BYTES,
        kept_for_w=tokens * INDEX_BYTES + hidden_bytes,
        params=table,
        static=table * per_param,
        flops=0.0,
    )
    projection = 2 * tokens * m.hidden * m.vocab
    softmax_bytes = FP32 * tokens * m.vocab
    head = LayerCost(
        "head",
        forward=projection * us + 3 * softmax_bytes * hbm_us,  # logits written, read, log-softmax written
        backward=projection * us + 2 * softmax_bytes * hbm_us,
        weight=projection * us,
        activation=head_activation(m, t),
        kept_for_w=tokens * mm * (m.hidden + m.vocab) + tokens * INDEX_BYTES,
        params=table + m.hidden,
        static=(table + m.hidden) * per_param,
        flops=3 * projection,
    )
    p2p = tokens * m.hidden * res
    return ModelCosts(
        embedding=embedding,
        decoder=decoder,
        head=head,
        layers=m.layers,
        comm=dev.latency * 1e6 + p2p / dev.bandwidth * 1e6,
        p2p_bytes=p2p,
        tied_bytes=table * per_param if m.tied_embeddings else 0.0,
    )


def with_profile(costs: ModelCosts, profile: Problem) -> ModelCosts:
    """Measured times and activation bytes (`pipesynth profile`, microseconds and bytes) in place of the model's.

    The profile has one stage per layer kind (embedding, one decoder layer,
    head) or one per layer (embedding, every decoder layer, head; the decoder
    layers' mean is used). Static bytes stay analytic: they are exact.
    """
    if profile.units is None or profile.units.time != "us" or not profile.units.bytes:
        raise PipesynthError('profile: expected a profiled problem with "units": {"time": "us", "memory": "bytes"}')
    if not profile.split_backward:
        raise PipesynthError("profile: profile with a split backward (--split-backward), so W is measured")
    count = profile.stages
    if count not in (3, costs.layers + 2):
        raise PipesynthError(
            f"profile: has {count} stages; expected 3 (embedding, one decoder layer, head) "
            f"or {costs.layers + 2} (embedding, each of the {costs.layers} decoder layers, head)"
        )

    def measured(base: LayerCost, stages: list[int]) -> LayerCost:
        def mean(values: tuple[float, ...]) -> float:
            return sum(values[s] for s in stages) / len(stages)

        return replace(
            base,
            forward=mean(profile.cost_f),
            backward=mean(profile.cost_b),
            weight=mean(profile.cost_w),
            activation=mean(profile.activation),
            kept_for_w=mean(profile.kept_for_w),
        )

    return replace(
        costs,
        embedding=measured(costs.embedding, [0]),
        decoder=measured(costs.decoder, list(range(1, count - 1))),
        head=measured(costs.head, [count - 1]),
        comm=profile.comm,
        source="profile",
    )
