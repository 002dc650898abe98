"""The early-fusion transformer (models.lm.LM with Chameleon's options) with imported
`ChameleonForConditionalGeneration` weights computes transformers' logits (float32).

Golden fixtures (tests/fixtures/chameleon_tiny*, made by tests/convert/make_chameleon_fixture.py
with the oracle interpreter) always run: both layer types, per-head QK LayerNorm, grouped
queries. The live test rebuilds fresh random models whenever torch imports.
"""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.convert import hf_chameleon, hf_files
from vlm_jax.convert.torch_layout import Weights
from vlm_jax.models import lm

FIXTURES = Path(__file__).parents[1] / "fixtures"
# Measured: max |ours - transformers| 2.7e-6 (pre-norm), 1.8e-6 (swin); logits reach 4.1 and 3.7.
TOLERANCE = 1e-5


def our_logits(config: dict, tensors: dict, tokens: np.ndarray) -> np.ndarray:
    weights = Weights(tensors, "chameleon")
    model_config, params = hf_chameleon.convert(config, weights)
    # Every text tensor was read; only the VQ-VAE's (absent from the fixture) may be left.
    assert [n for n in weights.unused() if not n.startswith("model.vqmodel.")] == []
    model = lm.LM(**model_config["lm"])
    return np.asarray(model.apply({"params": params["lm"]}, jnp.asarray(tokens, jnp.int32)))


@pytest.mark.parametrize("name, swin", [("chameleon_tiny", False), ("chameleon_tiny_swin", True)])
def test_chameleon_logits_match_golden_transformers(name, swin):
    directory = FIXTURES / name
    config = hf_files.read_config(directory)
    assert hf_chameleon.lm_config(config)["norm_position"] == ("output" if swin else "pre")
    expected = np.load(directory / "expected.npz")
    logits = our_logits(config, hf_files.read_weights(directory), expected["tokens"])
    assert np.abs(expected["logits"]).max() > 1.0  # not trivially small
    np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("swin", [False, True])
def test_chameleon_logits_match_live_transformers(swin):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    path = Path(__file__).with_name("make_chameleon_fixture.py")
    spec = importlib.util.spec_from_file_location("make_chameleon_fixture", path)
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    model, tokens = make.tiny_chameleon(swin, seed=7), make.tiny_tokens(seed=8)
    np.testing.assert_allclose(
        our_logits(make.text_config(model), make.text_tensors(model), tokens),
        make.transformer_logits(model, tokens), rtol=0, atol=TOLERANCE)
