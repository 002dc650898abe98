"""layers.py against NumPy: attention masks from mask_ar, grouped-query attention, RoPE,
QK-norm, RMSNorm, SwiGLU, the norm placements; cached decoding equals full recomputation."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models import layers

WIDTH, HEADS, LENGTH = 16, 4, 6
X = np.random.default_rng(0).normal(size=(2, LENGTH, WIDTH)).astype(np.float32)


def _mask(mask_ar, valid):
    return np.asarray(layers.make_attention_mask(np.array([mask_ar]), np.array([valid])))[0, 0]


def test_all_ones_mask_ar_is_causal():
    np.testing.assert_array_equal(_mask([1] * 4, [True] * 4), np.tril(np.ones((4, 4), bool)))


def test_all_zeros_mask_ar_is_bidirectional():
    np.testing.assert_array_equal(_mask([0] * 4, [True] * 4), np.ones((4, 4), bool))


def test_prefix_sees_itself_whole_and_the_suffix_is_causal():
    # Prefix of 3 (image + prompt), then 2 answer tokens.
    expected = np.array([[1, 1, 1, 0, 0],
                         [1, 1, 1, 0, 0],
                         [1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(_mask([0, 0, 0, 1, 1], [True] * 5), expected)


def test_blocks_see_earlier_blocks_and_their_own_block_whole():
    # Blocks {0, 1}, {2, 3, 4}, {5}: mask_ar 1 opens a block.
    block = np.array([0, 0, 1, 1, 1, 2])
    expected = block[None, :] <= block[:, None]
    np.testing.assert_array_equal(_mask([1, 0, 1, 0, 0, 1], [True] * 6), expected)


def test_padding_is_neither_query_nor_key():
    got = _mask([1, 1, 1, 1], [True, True, True, False])
    expected = np.tril(np.ones((4, 4), bool))
    expected[3, :] = expected[:, 3] = False
    np.testing.assert_array_equal(got, expected)


def _numpy_attention(q, k, v, mask=None):  # q [B, L, H, D], k/v [B, S, Hkv, D]
    repeat = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, repeat, axis=2), np.repeat(v, repeat, axis=2)  # kv head h // repeat
    logits = np.einsum("bqhd,bshd->bhqs", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqs,bshd->bqhd", weights, v)


def _project(x, p):
    return np.einsum("bld,dhk->blhk", x, p["kernel"]) + p["bias"]


def _attention_numpy(x, params, mask=None, positions=None, theta=0.0, qk_norm=False):
    q, k, v = (_project(x, params[name]) for name in ("query", "key", "value"))
    if qk_norm:
        q = _rms(q, params["query_norm"]["scale"])
        k = _rms(k, params["key_norm"]["scale"])
    if theta:
        q, k = _rope(q, positions, theta), _rope(k, positions, theta)
    out = _numpy_attention(q, k, v, mask)
    return np.einsum("bqhk,hkd->bqd", out, params["out"]["kernel"]) + params["out"]["bias"]


def _rms(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rope(x, positions, theta):
    """Per pair (d, d + D/2): rotate by angle position * theta^(-2d/D)."""
    half = x.shape[-1] // 2
    out = np.empty_like(x)
    for d in range(half):
        angle = positions[:, None] * theta ** (-2 * d / x.shape[-1])  # [L, 1]
        a, b = x[..., d], x[..., d + half]  # [B, L, H]
        out[..., d] = a * np.cos(angle) - b * np.sin(angle)
        out[..., d + half] = b * np.cos(angle) + a * np.sin(angle)
    return out


def _init(module, *args, **kwargs):
    params = nn.unbox(module.init(jax.random.PRNGKey(1), *args, **kwargs)["params"])
    return jax.tree_util.tree_map(np.asarray, params)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_grouped_query_attention_equals_numpy_with_repeated_kv_heads(kv_heads):
    attention = layers.Attention(HEADS, WIDTH, num_kv_heads=kv_heads)
    params = _init(attention, X)
    assert params["key"]["kernel"].shape == (WIDTH, kv_heads, WIDTH // HEADS)
    mask = np.asarray(layers.make_attention_mask(np.ones((2, LENGTH)), np.ones((2, LENGTH))))
    got = attention.apply({"params": params}, X, mask=mask)
    np.testing.assert_allclose(got, _attention_numpy(X, params, mask), rtol=1e-5, atol=1e-5)


def test_rope_and_qk_norm_equal_numpy():
    attention = layers.Attention(HEADS, WIDTH, num_kv_heads=2, rope_theta=100.0, qk_norm=True)
    params = _init(attention, X)
    # Non-trivial norm scales, so the norm's scale is tested too.
    params["query_norm"]["scale"] = np.linspace(0.5, 1.5, WIDTH // HEADS).astype(np.float32)
    params["key_norm"]["scale"] = np.linspace(1.5, 0.5, WIDTH // HEADS).astype(np.float32)
    got = attention.apply({"params": params}, X, is_causal=True)
    mask = np.tril(np.ones((LENGTH, LENGTH), bool))
    expected = _attention_numpy(X, params, mask, np.arange(LENGTH), 100.0, qk_norm=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_rope_scores_depend_only_on_the_relative_position():
    rng = np.random.default_rng(3)
    q, k = (rng.normal(size=(1, 1, 1, 8)).astype(np.float32) for _ in range(2))

    def score(query_position, key_position):
        rq = layers.apply_rope(jnp.asarray(q), jnp.array([[query_position]]), 10_000.0)
        rk = layers.apply_rope(jnp.asarray(k), jnp.array([[key_position]]), 10_000.0)
        return float(jnp.sum(rq * rk))

    assert score(7, 3) == pytest.approx(score(4, 0), rel=1e-5)
    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)  # the offset matters
    np.testing.assert_allclose(  # position 0 is the identity
        layers.apply_rope(jnp.asarray(q), jnp.zeros((1, 1), jnp.int32), 10_000.0), q)


def test_rms_norm_and_swiglu_equal_numpy():
    norm = layers.RMSNorm()
    params = _init(norm, X)
    params["scale"] = np.linspace(0.1, 2.0, WIDTH).astype(np.float32)
    np.testing.assert_allclose(norm.apply({"params": params}, X), _rms(X, params["scale"]),
                               rtol=1e-5, atol=1e-6)
    mlp = layers.SwiGLU(24)
    params = _init(mlp, X)
    silu = lambda z: z / (1 + np.exp(-z))
    expected = (silu(X @ params["gate"]["kernel"]) * (X @ params["up"]["kernel"])) @ \
        params["down"]["kernel"]
    np.testing.assert_allclose(mlp.apply({"params": params}, X), expected, rtol=1e-5, atol=1e-5)


def _ln(x, p, eps=1e-6):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * \
        p["scale"] + p["bias"]


def _gelu_mlp(x, p):
    h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


@pytest.mark.parametrize("position", ["pre", "post", "output"])
def test_norm_placements_equal_numpy(position):
    block = layers.Block(HEADS, 32, WIDTH, norm_position=position)
    params = _init(block, X)
    attend = lambda h: _attention_numpy(h, params["attn"])
    norm1 = lambda h: _ln(h, params["norm1"]["LayerNorm_0"])
    norm2 = lambda h: _ln(h, params["norm2"]["LayerNorm_0"])
    mlp = lambda h: _gelu_mlp(h, params["mlp"])
    if position == "pre":
        h = X + attend(norm1(X))
        expected = h + mlp(norm2(h))
    elif position == "post":
        h = norm1(X + attend(X))
        expected = norm2(h + mlp(h))
    else:
        h = X + norm1(attend(X))
        expected = h + norm2(mlp(h))
    np.testing.assert_allclose(block.apply({"params": params}, X), expected, rtol=1e-4,
                               atol=1e-5)


def test_cached_decoding_with_gqa_rope_qk_norm_rmsnorm_swiglu_equals_the_full_sequence():
    block = layers.Block(HEADS, 32, WIDTH, is_causal=True, norm="rmsnorm", mlp_type="swiglu",
                         activation="silu", num_kv_heads=2, rope_theta=50.0, qk_norm=True)
    params = block.init(jax.random.PRNGKey(0), X)
    full = block.apply(params, X)
    cache = block.apply(params, 2, LENGTH + 1, method=block.init_cache)
    assert cache["key"].shape == (2, LENGTH + 1, 2, WIDTH // HEADS)  # kv heads only
    outputs = []
    for start, stop in ((0, 2), (2, 3), (3, LENGTH)):
        out, cache = block.apply(params, X[:, start:stop], cache, jnp.int32(start),
                                 method=block.decode)
        outputs.append(out)
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, rtol=1e-5, atol=1e-5)


def test_bad_block_options_are_named():
    with pytest.raises(ValueError, match="norm_position 'middle'"):
        layers.Block(HEADS, 32, WIDTH, norm_position="middle").init(jax.random.PRNGKey(0), X)
    with pytest.raises(ValueError, match="num_kv_heads 3"):
        layers.Attention(HEADS, WIDTH, num_kv_heads=3).init(jax.random.PRNGKey(0), X)
    with pytest.raises(ValueError, match="norm 'batchnorm'"):
        layers.Block(HEADS, 32, WIDTH, norm="batchnorm").init(jax.random.PRNGKey(0), X)


def test_importing_layers_loads_no_family_decoding_or_losses():
    code = ("import sys, vlm_jax.models.layers; "
            "print(sorted(m for m in sys.modules if m.startswith('vlm_jax')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    for name in ("vlm_jax.models.coca", "vlm_jax.models.llip", "vlm_jax.models.two_tower",
                 "vlm_jax.decoding", "vlm_jax.losses", "vlm_jax.generation"):
        assert f"'{name}'" not in loaded, loaded
    assert "'vlm_jax.models.layers'" in loaded  # the probe really ran
