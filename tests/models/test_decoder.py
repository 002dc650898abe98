"""Decoder blocks (layers.Block, causal or cross-attention): the KV-cache path equals the
whole-sequence path, and matches a NumPy block."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models.layers import Block, step_mask


def CausalBlock(width, heads, mlp):  # noqa: N802  (the decoder's block, as coca.py builds it)
    return Block(heads, mlp, width, is_causal=True)


def CrossAttentionBlock(width, heads, mlp):  # noqa: N802
    return Block(heads, mlp, width, cross_attention=True)

WIDTH, HEADS, MLP, LENGTH = 16, 2, 32, 6
X = np.random.default_rng(0).normal(size=(2, LENGTH, WIDTH)).astype(np.float32)
CONTEXT = np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32)


def test_step_mask_lets_each_query_see_the_cache_up_to_itself():
    mask = np.asarray(step_mask(jnp.int32(2), 2, 5))[0, 0]
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])


def test_cached_steps_equal_the_whole_sequence():
    block = CausalBlock(WIDTH, HEADS, MLP)
    params = block.init(jax.random.PRNGKey(0), X)
    full = block.apply(params, X)
    cache = block.apply(params, 2, LENGTH + 2, method=block.init_cache)  # room to spare
    outputs = []
    # One token, then two at once, then the rest: the cache takes any chunking.
    for start, stop in ((0, 1), (1, 3), (3, LENGTH)):
        out, cache = block.apply(params, X[:, start:stop], cache, jnp.int32(start),
                                 method=block.decode)
        outputs.append(out)
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, rtol=1e-5, atol=1e-5)
    assert cache["key"].shape == (2, LENGTH + 2, HEADS, WIDTH // HEADS)
    np.testing.assert_array_equal(cache["key"][:, LENGTH:], 0)  # untouched positions


def _layer_norm(x, params):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * params["scale"] + params["bias"]


def _attention(query_in, context_in, params, causal):
    project = lambda x, p: np.einsum("bld,dhk->blhk", x, p["kernel"]) + p["bias"]
    q, k, v = (project(x, params[n]) for x, n in
               ((query_in, "query"), (context_in, "key"), (context_in, "value")))
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqs,bshk->bqhk", weights, v)
    return np.einsum("bqhk,hkd->bqd", out, params["out"]["kernel"]) + params["out"]["bias"]


def _mlp(x, params):
    h = x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))  # tanh GELU
    return h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def test_blocks_match_a_numpy_reference():
    causal = CausalBlock(WIDTH, HEADS, MLP)
    params = jax.tree_util.tree_map(
        np.asarray, nn.unbox(causal.init(jax.random.PRNGKey(1), X)["params"]))
    h = _layer_norm(X, params["norm1"]["LayerNorm_0"])
    expected = X + _attention(h, h, params["attn"], causal=True)
    expected = expected + _mlp(_layer_norm(expected, params["norm2"]["LayerNorm_0"]), params["mlp"])
    np.testing.assert_allclose(causal.apply({"params": params}, X), expected, rtol=1e-4, atol=1e-5)

    cross = CrossAttentionBlock(WIDTH, HEADS, MLP)

    def run(module, x, context):
        return module(x, context_kv=module.context_keys_values(context))

    variables = cross.init(jax.random.PRNGKey(2), X, CONTEXT, method=run)
    params = jax.tree_util.tree_map(np.asarray, nn.unbox(variables["params"]))
    query_in = _layer_norm(X, params["norm_query"]["LayerNorm_0"])
    context_in = _layer_norm(CONTEXT, params["norm_context"]["LayerNorm_0"])
    expected = X + _attention(query_in, context_in, params["attn"], causal=False)
    expected = expected + _mlp(_layer_norm(expected, params["norm2"]["LayerNorm_0"]), params["mlp"])
    np.testing.assert_allclose(cross.apply({"params": params}, X, CONTEXT, method=run), expected,
                               rtol=1e-4, atol=1e-5)
