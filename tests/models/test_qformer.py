"""The Q-Former's attention pattern, checked by what each position can be influenced by:
queries never see text in the captioning (causal) pass, text sees every query and only
earlier text, and in the matching (bidirectional) pass the text reaches the queries; the mask
itself equals the NumPy one written out by hand. Cross-attention sits in layers 0, 2, ...
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models import layers
from vlm_jax.models.qformer import QFormer

QUERIES, LENGTH = 3, 5


@pytest.fixture(scope="module")
def qformer():
    model = QFormer(vocab_size=20, width=16, depth=3, num_heads=2, mlp_dim=24,
                    num_queries=QUERIES, max_len=8)
    features = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 12))
    tokens = jnp.asarray([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]], jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), features, tokens)["params"])
    run = jax.jit(lambda f, t, ar: model.apply({"params": params}, f, t, ar))
    return model, params, features, tokens, run


def test_multimodal_causal_mask_equals_the_hand_written_one():
    mask_ar = jnp.concatenate([jnp.zeros((1, QUERIES), int), jnp.ones((1, LENGTH), int)], 1)
    valid = jnp.asarray([[True] * QUERIES + [True, True, True, False, False]])
    mask = np.asarray(layers.make_attention_mask(mask_ar, valid))[0, 0]
    expected = np.zeros((QUERIES + LENGTH,) * 2, bool)
    expected[:QUERIES, :QUERIES] = True  # queries: queries only
    for t in range(3):  # valid text: all queries and the text up to itself
        expected[QUERIES + t, :QUERIES] = True
        expected[QUERIES + t, QUERIES:QUERIES + t + 1] = True
    np.testing.assert_array_equal(mask, expected)


def test_captioning_pass_queries_ignore_text_and_text_is_causal(qformer):
    _, _, features, tokens, run = qformer
    causal = np.asarray(run(features, tokens, 1))
    changed = np.asarray(run(features, tokens.at[0, 3].set(11), 1))
    alone = np.asarray(run(features, None, 0))
    np.testing.assert_allclose(causal[:, :QUERIES], alone, atol=1e-5)  # queries see no text
    np.testing.assert_allclose(changed[0, :QUERIES + 3], causal[0, :QUERIES + 3], atol=1e-5)
    assert np.abs(changed[0, QUERIES + 3:] - causal[0, QUERIES + 3:]).max() > 1e-3
    # Text sees the image through the queries: other features change every text output.
    other = np.asarray(run(features[::-1], tokens, 1))
    assert np.abs(other[0, QUERIES:] - causal[1, QUERIES:]).max() > 0  # rows differ anyway
    assert np.abs(np.asarray(run(features * 2, tokens, 1))[0, QUERIES]
                  - causal[0, QUERIES]).max() > 1e-3


def test_matching_pass_lets_text_reach_the_queries(qformer):
    _, _, features, tokens, run = qformer
    both = np.asarray(run(features, tokens, 0))
    changed = np.asarray(run(features, tokens.at[0, 4].set(11), 0))
    assert np.abs(changed[0, :QUERIES] - both[0, :QUERIES]).max() > 1e-3
    # Padding is invisible: the padded row's valid outputs are those of its unpadded text.
    unpadded = np.asarray(run(features[1:], tokens[1:, :3], 0))
    np.testing.assert_allclose(both[1, :QUERIES + 3], unpadded[0], atol=1e-5)


def test_cross_attention_every_other_layer(qformer):
    _, params, *_ = qformer
    assert ["cross_attention" in params[f"layer{i}"] for i in range(3)] == [True, False, True]
    # Text-only passes build no queries: the text FFN alone, for ITC's text side.
    assert {"mlp", "mlp_query"} <= set(params["layer1"])
