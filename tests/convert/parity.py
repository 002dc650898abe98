"""Shared by the converter tests: run a converted checkpoint, load the fixture script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm_jax import models
from vlm_jax.convert import convert_hf

FIXTURES = Path(__file__).parents[1] / "fixtures"
MAKE_FIXTURES = Path(__file__).with_name("make_fixtures.py")


def load_make_fixtures():
    """tests/convert/make_fixtures.py as a module (it imports torch and transformers)."""
    spec = importlib.util.spec_from_file_location("make_fixtures", MAKE_FIXTURES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bert_tower_config(text: dict, vocab_size: int) -> dict:
    """A converted `model.text` config as BertTextTower kwargs."""
    return {k: v for k, v in text.items() if k not in ("type", "variant")} | {
        "vocab_size": vocab_size}


def converted_outputs(source, inputs: dict) -> dict[str, np.ndarray]:
    """Our outputs, named as make_fixtures.tiny_outputs names transformers'."""
    from vlm_jax.models.bert import BertTextTower

    converted = convert_hf(str(source))
    ids = np.asarray(inputs["input_ids"], np.int32)
    if converted.model_type == "bert":
        tower = BertTextTower(**bert_tower_config(converted.model["text"], converted.vocab_size))
        pooled, extras = tower.apply({"params": converted.params["text_tower"]}, ids)
        return {"tokens": extras["tokens"], "mean_pooled": pooled}
    model = models.build_model(ml_collections.ConfigDict(converted.model), converted.vocab_size)
    variables = {"params": converted.params}
    images = jnp.asarray(np.asarray(inputs["pixel_values"]).transpose(0, 2, 3, 1))  # NCHW->NHWC
    # One forward pass; the projections' outputs (before L2 normalisation) are captured.
    (image_emb, text_emb, extras), state = model.apply(
        variables, images, ids, mutable=["intermediates"],
        capture_intermediates=lambda module, method: module.name in ("image_proj", "text_proj"))
    projected = state["intermediates"]
    out = {
        "image_features": projected["image_proj"]["__call__"][0],
        "text_features": projected["text_proj"]["__call__"][0],
        "image_embeds": image_emb,
        "text_embeds": text_emb,
        "logits_per_image": image_emb @ text_emb.T * extras["logit_scale"]
        + extras.get("logit_bias", 0.0),
        "logit_scale": extras["logit_scale"],
    }
    if "logit_bias" in extras:
        out["logit_bias"] = extras["logit_bias"]
    return {k: np.asarray(v) for k, v in out.items()}


def max_abs_diffs(ours: dict, expected) -> dict[str, float]:
    """Per output: the largest |ours - expected| (over every output transformers gave)."""
    names = [k for k in expected.keys() if k not in ("input_ids", "pixel_values")]
    return {k: float(np.max(np.abs(np.asarray(ours[k]).reshape(np.shape(expected[k]))
                                   - expected[k]))) for k in names}


def assert_init_from_fills_the_whole_model(directory: Path, text_length: int) -> None:
    """config.init_from = a converted directory: every parameter of a fresh model of the
    converted config is replaced by the converter's value (no more, no fewer)."""
    import flax.linen as nn
    import jax

    from vlm_jax.convert import flatten
    from vlm_jax.init_from import load_into
    from vlm_jax.train_state import TrainState

    converted = convert_hf(str(directory))
    model = models.build_model(ml_collections.ConfigDict(converted.model), converted.vocab_size)
    images, tokens = jnp.zeros((1, 32, 32, 3)), jnp.full((1, text_length), 63, jnp.int32)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"])
    fresh = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
    state = TrainState(jnp.zeros((), jnp.int32), fresh, (), None)
    loaded = flatten(load_into(state, str(directory), verbose=False).params)
    expected = flatten(converted.params)
    assert sorted(loaded) == sorted(expected)
    for path, array in expected.items():
        np.testing.assert_array_equal(np.asarray(loaded[path]), array, err_msg=path)
