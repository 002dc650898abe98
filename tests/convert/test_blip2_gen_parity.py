"""prefix_vlm (connector "qformer") with imported BLIP-2 weights computes what transformers'
Blip2ForConditionalGeneration with a Llama LM computes (float32): the Q-Former's query
outputs, their language_projection, and the LM's logits at every position.

The golden fixture (tests/fixtures/blip2_gen_tiny, made by tests/convert/make_blip2_gen_fixture.py)
always runs; the live test rebuilds a fresh random BLIP-2 whenever torch imports.
Both models see the same sequence: input_ids hold num_query_tokens copies of HF's
image_token_index (row 0 before BOS, as Blip2Processor writes them; row 1 inside the text);
transformers 5 scatters the projected queries into those positions in order, and prefix_vlm
replaces the k-th placeholder of a row by the k-th image embedding.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from parity import assert_init_from_fills_the_whole_model

from vlm_jax import models
from vlm_jax.convert import convert_hf, flatten, hf_blip2_gen, hf_files
from vlm_jax.convert.torch_layout import Weights

FIXTURE = Path(__file__).parents[1] / "fixtures" / "blip2_gen_tiny"
OUTPUTS = ("query_hidden", "projected", "logits")
# Measured max |ours - transformers| (golden): query outputs 1.7e-6, projection 1.9e-6, logits
# 6.7e-6 (they reach 5.7); the live test's seeds: see test_blip2_logits_match_live_transformers.
# The Q-Former reading the patch tokens without CLS instead is off by 0.30 (query outputs)
# and 0.57 (logits): the negative control below.
TOLERANCE = 1e-5


def load_make_fixture():
    path = Path(__file__).with_name("make_blip2_gen_fixture.py")
    spec = importlib.util.spec_from_file_location("make_blip2_gen_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def our_outputs(source, inputs, **overrides) -> dict[str, np.ndarray]:
    """query_hidden [B, Q, D_q], projected [B, Q, D], logits [B, T, V] of the converted
    checkpoint on HF's inputs (pixels NCHW -> NHWC)."""
    converted = convert_hf(str(source))
    model_config = ml_collections.ConfigDict(converted.model)
    model_config.update(overrides)
    model = models.build_model(model_config, converted.vocab_size)
    variables = {"params": converted.params}
    images = jnp.asarray(np.asarray(inputs["pixel_values"]).transpose(0, 2, 3, 1))
    tokens = jnp.asarray(np.asarray(inputs["input_ids"], np.int32))
    return {
        "query_hidden": np.asarray(model.apply(variables, images, method=model.query_outputs)),
        "projected": np.asarray(model.apply(variables, images, method=model.image_embeddings)),
        "logits": np.asarray(model.apply(variables, images, tokens)),
    }


def assert_matches(ours: dict, expected) -> None:
    for name in OUTPUTS:
        error = np.abs(ours[name] - expected[name]).max()
        assert error <= TOLERANCE, f"{name}: max |ours - transformers| {error:.2e}"


def test_the_converted_model_is_blip2_stage2():
    converted = convert_hf(str(FIXTURE))
    assert converted.model_type == "blip-2" and converted.unused == []
    model = converted.model
    assert (model["name"], model["connector"], model["qformer_reads_cls"]) == (
        "prefix_vlm", "qformer", True)
    assert model["image"]["pool"] == "cls" and model["image"]["activation"] == "gelu_exact"
    assert model["qformer"]["num_queries"] == 4 and model["image_token_id"] == 63
    assert (model["lm"]["num_heads"], model["lm"]["num_kv_heads"]) == (4, 2)  # GQA
    assert converted.params["projector"]["linear"]["kernel"].shape == (32, 40)


def test_blip2_outputs_match_golden_transformers():
    expected = np.load(FIXTURE / "expected.npz")
    assert_matches(our_outputs(FIXTURE, expected), expected)
    # Not degenerate: the logits are large and the soft prompt differs between the images.
    assert np.abs(expected["logits"]).max() > 1.0
    assert np.abs(expected["projected"][0] - expected["projected"][1]).max() > 0.1


def test_the_queries_without_cls_do_not_match():
    """Negative control: HF's Q-Former reads CLS + patches; dropping CLS changes everything
    downstream by far more than the tolerance."""
    expected = np.load(FIXTURE / "expected.npz")
    ours = our_outputs(FIXTURE, expected, qformer_reads_cls=False)
    assert np.abs(ours["query_hidden"] - expected["query_hidden"]).max() > 1e4 * TOLERANCE
    assert np.abs(ours["logits"] - expected["logits"]).max() > 1e4 * TOLERANCE


def test_separate_q_and_v_biases_convert_with_a_zero_key_bias(tmp_path):
    """Files keeping q_bias and v_bias apart (no key bias) read as qkv.bias = [q; 0; v]."""
    from safetensors.numpy import save_file

    tensors = dict(hf_files.read_weights(FIXTURE))
    for name in [n for n in tensors if n.endswith("self_attn.qkv.bias")]:
        q_bias, _, v_bias = np.split(tensors.pop(name), 3)
        tensors[name.replace("qkv.bias", "q_bias")] = q_bias
        tensors[name.replace("qkv.bias", "v_bias")] = v_bias
    save_file(tensors, str(tmp_path / "model.safetensors"))
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    reference, converted = convert_hf(str(FIXTURE)), convert_hf(str(tmp_path))
    assert converted.unused == []
    expected, got = flatten(reference.params), flatten(converted.params)
    assert sorted(got) == sorted(expected)
    for path, array in expected.items():
        if "image_tower/encoder" in path and path.endswith("attn/key/bias"):
            np.testing.assert_array_equal(got[path], 0.0, err_msg=path)
        else:
            np.testing.assert_array_equal(got[path], array, err_msg=path)


@pytest.mark.parametrize("change, problem", [
    ({"text_config": {"model_type": "opt"}}, "text_config.model_type 'opt'"),
    ({"image_token_index": None}, "no image_token_index"),
])
def test_checkpoints_prefix_vlm_does_not_compute_are_refused(change, problem):
    config = json.loads((FIXTURE / "config.json").read_text()) | change
    with pytest.raises(ValueError, match=problem):
        hf_blip2_gen.convert(config, Weights({}, source="blip-2"))


def test_reading_cls_needs_a_cls_pooled_tower():
    converted = convert_hf(str(FIXTURE))
    model_config = ml_collections.ConfigDict(converted.model)
    model_config.image.pool = "map"
    model = models.build_model(model_config, converted.vocab_size)
    with pytest.raises(ValueError, match="qformer_reads_cls needs a CLS token"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                       jnp.full((1, 4), 63, jnp.int32))


def test_init_from_the_directory_fills_the_whole_model():
    """config.init_from = a BLIP-2 directory: every parameter of a fresh prefix_vlm replaced."""
    assert_init_from_fills_the_whole_model(FIXTURE, text_length=8)


def test_blip2_logits_match_live_transformers(tmp_path):
    """Measured (seeds 5, 6): max error 2.2e-6 (query outputs), 2.1e-6 (projection), 7.6e-6
    (logits, which reach 4.9), comparing against a fixture made with these seeds."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    make = load_make_fixture()
    model, inputs = make.tiny_blip2(seed=5), make.tiny_inputs(seed=6)
    model.save_pretrained(tmp_path)
    assert_matches(our_outputs(tmp_path, inputs), make.tiny_outputs(model, inputs))
