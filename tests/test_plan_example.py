"""The example config (Llama-3-8B's public sizes) reads as the model it describes."""

from pathlib import Path

from pipesynth.plan.costs import model_params
from pipesynth.plan.job import read_hf_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "llama-3-8b-config.json"


def test_llama_3_8b_example_has_eight_billion_parameters():
    model = read_hf_config(EXAMPLE)
    assert model_params(model) == 8_030_261_248  # Llama-3-8B's published parameter count
