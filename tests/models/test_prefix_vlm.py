"""PrefixVLM (Frozen, LLaVA): placeholders take the image embeddings in order, cached decoding
equals the full forward, and the ViT's feature_layer is the hidden state below the norm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models import layers
from vlm_jax.models.prefix_vlm import PrefixVLM
from vlm_jax.models.vit import ViT

VOCAB, IMAGE_ID, BOS, PAD = 40, 40, 2, 0  # the placeholder lies outside the LM's vocabulary
IMAGE = dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, pool="map")
LM = dict(vocab_size=VOCAB, width=32, depth=2, num_heads=4, num_kv_heads=2, head_dim=8,
          mlp_dim=64)


def tiny(connector: str, **fields) -> PrefixVLM:
    return PrefixVLM(image=IMAGE, language=LM, image_token_id=IMAGE_ID, connector=connector,
                     num_prefix_tokens=3, bos_id=BOS, pad_id=PAD, **fields)


def images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("connector", ["prefix", "patches"])
def test_placeholders_take_the_image_embeddings_in_order(connector):
    model = tiny(connector, projector="mlp")
    n = model.num_image_tokens(16)  # prefix: 3; patches: (16 / 8)^2 = 4
    assert n == (3 if connector == "prefix" else 4)
    pixels = images(2)
    # Row 0: the image first; row 1: inside the text (a chat template's user turn).
    tokens = np.array([[BOS] + [IMAGE_ID] * n + [5, 6, 7],
                       [BOS, 9, 11] + [IMAGE_ID] * n + [8]], np.int32)
    params = model.init(jax.random.PRNGKey(0), pixels, tokens)["params"]
    image_embeddings = np.asarray(model.apply({"params": params}, pixels,
                                              method=model.image_embeddings))
    assert image_embeddings.shape == (2, n, LM["width"])
    merged = np.asarray(model.apply({"params": params}, jnp.asarray(tokens),
                                    jnp.asarray(image_embeddings), method=model.merge))
    table = np.asarray(nn.unbox(params)["lm"]["token_embedding"]["embedding"])
    for row in range(2):
        k = 0
        for t, token in enumerate(tokens[row]):
            if token == IMAGE_ID:
                np.testing.assert_array_equal(merged[row, t], image_embeddings[row, k])
                k += 1
            else:
                np.testing.assert_array_equal(merged[row, t], table[token])


def test_several_images_per_row_fill_successive_placeholder_groups():
    model = tiny("prefix")
    pair = np.stack([images(1, seed=1)[0], images(1, seed=2)[0]])[None]  # [1, 2, S, S, 3]
    tokens = np.array([[BOS] + [IMAGE_ID] * 6 + [5]], np.int32)
    params = model.init(jax.random.PRNGKey(0), pair[:, 0], tokens)["params"]
    both = np.asarray(model.apply({"params": params}, pair, method=model.image_embeddings))
    each = [np.asarray(model.apply({"params": params}, pair[:, m],
                                   method=model.image_embeddings)) for m in range(2)]
    np.testing.assert_allclose(both, np.concatenate(each, axis=1), atol=1e-6)


def test_cached_decoding_equals_the_full_forward():
    """Feeding the sequence one token at a time (placeholders taking the next image
    embedding) gives the teacher-forcing logits."""
    model = tiny("patches")
    pixels = images(2)
    tokens = np.array([[BOS, 9] + [IMAGE_ID] * 4 + [5, 6, 7, 8],
                       [BOS] + [IMAGE_ID] * 4 + [11, 12, 13, 14, 15]], np.int32)
    params = model.init(jax.random.PRNGKey(0), pixels, tokens)["params"]
    full = np.asarray(model.apply({"params": params}, pixels, tokens))
    embeddings = model.apply({"params": params}, pixels, method=model.image_embeddings)
    cache = model.apply({"params": params}, embeddings, tokens.shape[1], method=model.init_cache)
    for position in range(tokens.shape[1]):
        logits, cache = model.apply({"params": params}, cache, jnp.asarray(tokens[:, position]),
                                    jnp.int32(position), method=model.decode_step)
        np.testing.assert_allclose(np.asarray(logits), full[:, position], atol=2e-5)
    np.testing.assert_array_equal(np.asarray(cache["images_used"]), [4, 4])


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_feature_layer_is_the_hidden_state_below_the_final_norm(pool):
    """feature_layer -1 is the last block's output before the encoder's norm: normed with that
    norm's own parameters it is the tower's "tokens"; -2 differs from it (one block less)."""
    tower = dict(IMAGE, pool=pool)
    pixels = images(2)
    last = ViT(**tower, feature_layer=-1)
    params = last.init(jax.random.PRNGKey(0), pixels)["params"]
    _, extras = last.apply({"params": params}, pixels)
    norm = layers.LayerNorm(jnp.float32, 1e-6)
    normed = norm.apply({"params": nn.unbox(params)["encoder"]["norm"]}, extras["feature_tokens"])
    np.testing.assert_allclose(np.asarray(normed), np.asarray(extras["tokens"]), atol=1e-5)
    assert extras["feature_tokens"].shape == (2, 4, 32)  # CLS dropped
    _, below = ViT(**tower, feature_layer=-2).apply({"params": params}, pixels)
    assert not np.allclose(below["feature_tokens"], extras["feature_tokens"], atol=1e-3)
    # Both towers hold the same parameters: a trained tower loads whole.
    plain = ViT(**tower).init(jax.random.PRNGKey(0), pixels)["params"]
    assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(params)
