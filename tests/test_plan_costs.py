"""The analytic model against a real tiny Llama (transformers, random weights, CPU): parameter counts
exact, activation bytes within 10% of what the executor's activation meter measures, after F and, with
the executor's split backward, after B (what W still needs)."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


from pipesynth.plan.costs import (  # noqa: E402
    bytes_per_param,
    decoder_activation,
    decoder_params,
    head_activation,
    model_costs,
)
from pipesynth.plan.job import Device, Job, Training, model_from_hf_config  # noqa: E402
from pipesynth.plan.partition import Partition, device_static, stage_figures  # noqa: E402
from pipesynth.plan.plan_file import split_by_partition  # noqa: E402
from pipesynth.runtime.layer_memory import layer_kind_bytes, split_backward_bytes  # noqa: E402

TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}
DEVICE = Device(tflops=100, mfu=0.5, memory=2**30)


def build(config: dict, attention: str = "sdpa"):
    torch.manual_seed(0)
    classes = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}
    conf_classes = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}
    fields = {k: v for k, v in config.items() if k != "model_type"}
    conf = conf_classes[config["model_type"]](**fields, attn_implementation=attention)
    return classes[config["model_type"]](conf)


def layer_list(model) -> list:
    """[embedding, decoder layers..., (final norm, head)] as the plan counts them."""
    inner = model.model
    return [inner.embed_tokens, *inner.layers, torch.nn.ModuleList([inner.norm, model.lm_head])]


def param_bytes(modules, per_param: float) -> float:
    unique = {id(p): p for m in modules for p in m.parameters()}
    return sum(p.numel() for p in unique.values()) * per_param


@pytest.mark.parametrize(
    "config",
    [TINY, {**TINY, "tie_word_embeddings": True}, {**TINY, "model_type": "qwen2"}, {**TINY, "attention_bias": True}],
    ids=["llama", "tied", "qwen2-qkv-bias", "llama-attention-bias"],
)
def test_static_bytes_per_stage_and_device_equal_the_built_models_parameters(config):
    training = Training(seq_len=16, microbatch_size=1, microbatches=4, optimizer="adamw", zero=2)
    job = Job(model_from_hf_config(config), training, DEVICE, 2)
    costs = model_costs(job)
    model = build(config)
    per = bytes_per_param(training)
    assert per == 4 + 4 + 8 / 2
    for counts in [(0, 2, 2, 0), (1, 1, 1, 1), (4,), (2, 2)]:
        partition = Partition(counts)
        groups = split_by_partition(layer_list(model), partition)
        fig = stage_figures(costs, partition)
        for s, group in enumerate(groups):
            assert fig.static[s] == param_bytes(group, per)
        if len(counts) == 4:  # a V on two devices: device 0 holds stages 0 and 3
            static = device_static(costs, fig, (0, 1, 1, 0), 2)
            assert static[0] == param_bytes(groups[0] + groups[3], per)
            assert static[1] == param_bytes(groups[1] + groups[2], per)


@pytest.mark.parametrize("precision", ["bf16-autocast", "bf16", "fp32"])
@pytest.mark.parametrize("attention", ["flash", "eager"])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_activation_bytes_are_within_ten_percent_of_the_meter(precision, attention, recompute):
    model = model_from_hf_config(TINY)
    for seq_len in (32, 64):
        for microbatch_size in (1, 2):
            training = Training(
                seq_len=seq_len,
                microbatch_size=microbatch_size,
                microbatches=1,
                precision=precision,
                recompute=recompute,
                attention=attention,
            )
            costs = model_costs(Job(model, training, DEVICE, 1))
            llama = build(TINY, "sdpa" if attention == "flash" else "eager")
            if precision == "bf16":
                llama = llama.to(torch.bfloat16)
            measured = layer_kind_bytes(
                llama,
                microbatch_size,
                seq_len,
                autocast=precision == "bf16-autocast",
                recompute=recompute == "full",
            )
            predicted = {k: getattr(costs, k).activation for k in measured}
            for kind in measured:
                assert abs(predicted[kind] - measured[kind]) <= 0.1 * measured[kind], (kind, seq_len, microbatch_size)
            assert predicted["decoder"] == decoder_activation(model, training)
            assert predicted["head"] == head_activation(model, training)


@pytest.mark.parametrize("precision", ["bf16-autocast", "bf16", "fp32"])
@pytest.mark.parametrize("attention", ["flash", "eager"])
def test_kept_for_w_is_what_the_executors_split_b_leaves_for_w(precision, attention):
    """The level after the executor's B (split Linears deferring their products, RMSNorm weight gradients in
    B) is the model's kept-for-W bytes; the level after F is the model's too, except under autocast, where
    a split Linear saves only its input and not autocast's bf16 copy of its weight, which the model counts
    per microbatch (an upper bound by exactly those bytes)."""
    model = model_from_hf_config(TINY)
    for seq_len, microbatch_size in ((32, 1), (64, 2)):
        training = Training(seq_len, microbatch_size, 1, precision=precision, attention=attention)
        costs = model_costs(Job(model, training, DEVICE, 1)).decoder
        llama = build(TINY, "sdpa" if attention == "flash" else "eager")
        if precision == "bf16":
            llama = llama.to(torch.bfloat16)
        after_f, after_b = split_backward_bytes(llama, microbatch_size, seq_len, autocast=precision == "bf16-autocast")
        assert abs(costs.kept_for_w - after_b) <= 0.1 * after_b, (seq_len, microbatch_size, after_b)
        weight_copies = 2 * decoder_params(model)[0] if precision == "bf16-autocast" else 0
        assert abs(costs.activation - weight_copies - after_f) <= 0.1 * after_f, (seq_len, microbatch_size, after_f)
