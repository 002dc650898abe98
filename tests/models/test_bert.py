"""BERT-family text tower: post-norm blocks, padding-invariant pooling, chosen by config."""

import jax
import ml_collections
import numpy as np
import pytest

from vlm_jax import models
from vlm_jax.models.bert import BertTextTower

TOKENS = np.array([[2, 5, 6, 7, 3, 0], [2, 8, 3, 0, 0, 0]], np.int32)  # 0 = padding


def _tower(**kwargs):
    return BertTextTower(vocab_size=16, width=32, depth=2, num_heads=4, mlp_dim=64, max_len=16,
                         **kwargs)


def test_pooling_ignores_padding_and_blocks_end_in_a_layer_norm():
    params = _tower().init(jax.random.PRNGKey(0), TOKENS)  # pool adds no parameters
    padded = np.pad(TOKENS, ((0, 0), (0, 5)))
    for pool in ("mean", "first"):
        short, extras = _tower(pool=pool).apply(params, TOKENS)
        long, _ = _tower(pool=pool).apply(params, padded)
        np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-6)
    tokens = np.asarray(extras["tokens"])
    np.testing.assert_allclose(short, tokens[:, 0], rtol=1e-6)  # "first": the [CLS] state
    mean, _ = _tower(pool="mean").apply(params, TOKENS)
    np.testing.assert_allclose(mean[1], tokens[1, :3].mean(0), rtol=1e-5, atol=1e-6)
    # Post-norm: every token's output is LayerNorm-ed (unit scale, zero bias at init).
    np.testing.assert_allclose(tokens.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(tokens.std(-1), 1.0, atol=1e-3)


def test_text_tower_type_is_checked():
    image = dict(variant="", width=32, depth=1, num_heads=4, mlp_dim=64, patch_size=8, pool="map")
    text = dict(type="gpt", variant="", width=32, depth=1, num_heads=4, mlp_dim=64, max_len=16)
    config = ml_collections.ConfigDict(dict(
        name="two_tower", embed_dim=16, logit_scale_init=1.0, logit_bias_init=None,
        max_logit_scale=100.0, image=image, text=text))
    with pytest.raises(ValueError, match="text tower type 'gpt' must be one of"):
        models.build_model(config, vocab_size=16).init(
            jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.uint8), TOKENS)
