"""Text tower: pooling modes and padding invariance."""

import jax
import numpy as np
import pytest

from vlm_jax.models.text import TextTransformer

TOKENS = np.array([[5, 6, 7, 3, 0, 0], [8, 9, 3, 0, 0, 0]], np.int32)  # 3 = EOS, 0 = padding


def _tower(**kwargs):
    return TextTransformer(vocab_size=16, width=32, depth=2, num_heads=4, mlp_dim=64,
                           max_len=16, **kwargs)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pool", ["eos", "first", "mean"])
def test_pooled_output_ignores_extra_padding(causal, pool):
    tower = _tower(causal=causal, pool=pool)
    params = tower.init(jax.random.PRNGKey(0), TOKENS)
    short, _ = tower.apply(params, TOKENS)
    padded = np.concatenate([TOKENS, np.zeros((2, 4), np.int32)], axis=1)
    long, _ = tower.apply(params, padded)
    np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-6)


def test_eos_pool_reads_the_last_real_token_and_mean_pool_averages_real_tokens():
    tower = _tower(causal=True, pool="eos")
    params = tower.init(jax.random.PRNGKey(0), TOKENS)
    pooled, extras = tower.apply(params, TOKENS)
    # The pooled row comes from a last block run on that row alone (Block.at_rows): equal up to
    # float32 rounding (measured 1.4e-7), while a neighbouring row differs by O(1).
    np.testing.assert_allclose(pooled[0], extras["tokens"][0, 3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled[1], extras["tokens"][1, 2], rtol=1e-5, atol=1e-6)
    mean, extras = _tower(causal=True, pool="mean").apply(params, TOKENS)
    np.testing.assert_allclose(mean[1], extras["tokens"][1, :3].mean(0), rtol=1e-5)


def test_causal_tower_does_not_look_ahead():
    tower = _tower(causal=True, pool="first")
    params = tower.init(jax.random.PRNGKey(0), TOKENS)
    changed = TOKENS.copy()
    changed[:, 1] = 11  # a later token changes; the first position must not see it
    a, _ = tower.apply(params, TOKENS)
    b, _ = tower.apply(params, changed)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_too_long_text_is_an_error():
    tower = _tower()
    with pytest.raises(ValueError, match="exceeds the tower's max_len 16"):
        tower.init(jax.random.PRNGKey(0), np.ones((1, 20), np.int32))
