"""The CPU-friendly backward passes against independent references: dense_matmul's against NumPy
(both forms of the kernel gradient) and in nn.Dense, Projection (the fused q/k/v matmul's
parameters) against flax's nn.DenseGeneral, layer_norm against flax's nn.LayerNorm, the GELU
against its float64 formula."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models import dense_matmul, layer_norm, layers

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("width,features", [(7, 3), (3, 7), (5, 5)],
                         ids=["wide input: (G^T X)^T", "wide output: X^T G", "square"])
def test_matmul_gradients_equal_numpy(width, features):
    x = RNG.normal(size=(2, 5, width)).astype(np.float32)
    kernel = RNG.normal(size=(width, features)).astype(np.float32)
    cotangent = RNG.normal(size=(2, 5, features)).astype(np.float32)
    y, vjp = jax.vjp(dense_matmul.matmul, x, kernel)
    grad_x, grad_kernel = vjp(cotangent)
    x64, k64, g64 = (a.astype(np.float64) for a in (x, kernel, cotangent))
    np.testing.assert_allclose(y, x64 @ k64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_x, g64 @ k64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_kernel, np.einsum("bld,blf->df", x64, g64),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", [None, jax.lax.Precision.HIGHEST])
def test_dense_with_our_dot_general_equals_numpy(precision):
    """Both branches: the dense contraction through `matmul` and the fallback (a precision)."""
    dense = nn.Dense(6, dot_general=dense_matmul.dot_general, precision=precision)
    x = RNG.normal(size=(3, 4, 9)).astype(np.float32)
    params = dense.init(jax.random.key(0), x)
    params["params"]["bias"] = jnp.asarray(RNG.normal(size=6), jnp.float32)
    grads = jax.grad(lambda p: jnp.sum(dense.apply(p, x) ** 2))(params)["params"]
    kernel, bias = (np.asarray(params["params"][n], np.float64) for n in ("kernel", "bias"))
    y = x.astype(np.float64) @ kernel + bias
    np.testing.assert_allclose(dense.apply(params, x), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["kernel"], np.einsum("bld,blf->df", x, 2 * y),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["bias"], (2 * y).sum((0, 1)), rtol=1e-4, atol=1e-4)


def test_heads_projection_draws_dense_generals_parameters():
    """Same names, shapes and values from the same key as the nn.DenseGeneral it replaced, so
    seeds and checkpoints keep their meaning."""
    x = jnp.ones((2, 3, 16))
    ours = layers.Projection((4, 8), ("embed", "heads", "head_dim"))
    theirs = nn.DenseGeneral((4, 8), kernel_init=nn.initializers.xavier_uniform())
    key = jax.random.key(1)
    ours_params = nn.unbox(ours.init(key, 16, method="weights"))["params"]
    theirs_params = theirs.init(key, x)["params"]
    assert jax.tree.map(np.shape, ours_params) == jax.tree.map(np.shape, theirs_params)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(ours_params[name], theirs_params[name])
    bound = ours.bind({"params": ours_params})
    queries, keys = layers.project(x, [bound, bound], jnp.float32)
    expected = theirs.apply({"params": theirs_params}, x)
    np.testing.assert_allclose(queries, expected, rtol=1e-6)
    np.testing.assert_allclose(keys, expected, rtol=1e-6)


def test_layer_norm_and_its_gradients_equal_flax_layer_norm():
    """The hand-written backward against autodiff of flax's nn.LayerNorm (which it replaced),
    the forward against NumPy; a scale and bias away from 1 and 0, so every term counts."""
    x = RNG.normal(1.0, 2.0, size=(2, 5, 16)).astype(np.float32)
    scale, bias = (RNG.normal(size=16).astype(np.float32) for _ in range(2))
    cotangent = RNG.normal(size=x.shape).astype(np.float32)
    ours, ours_vjp = jax.vjp(lambda *a: layer_norm.layer_norm(*a, 1e-6), x, scale, bias)
    flax_norm = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)
    theirs, theirs_vjp = jax.vjp(
        lambda x, s, b: flax_norm.apply({"params": {"scale": s, "bias": b}}, x), x, scale, bias)
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(-1, keepdims=True)
    expected = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-6) * scale + bias
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(ours_vjp(cotangent), theirs_vjp(cotangent)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_layernorm_folded_into_the_next_dense_equals_it_unfolded(monkeypatch):
    """A pre-norm block with its norms' scale and bias away from 1 and 0: the folded path
    ((x s + b) W + c as x (s W) + (b W + c)) against the norm written out, values and grads."""
    block = layers.Block(num_heads=2, mlp_dim=32, width=16)
    x = jnp.asarray(RNG.normal(size=(2, 5, 16)), jnp.float32)
    params = block.init(jax.random.key(0), x)
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.asarray(RNG.normal(size=p.shape), jnp.float32)
        if "LayerNorm_0" in jax.tree_util.keystr(path) else p, params)
    loss = lambda p: jnp.sum(block.apply(p, x) ** 2)  # noqa: E731
    folded, folded_grads = block.apply(params, x), jax.grad(loss)(params)
    monkeypatch.setattr(layers, "LayerNorm", type("NotALayerNorm", (), {}))  # no fold
    np.testing.assert_allclose(folded, block.apply(params, x), rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(folded_grads), jax.tree.leaves(jax.grad(loss)(params))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("widths", [(2, 4, 3), (3, 3, 3)], ids=["unequal", "equal"])
def test_split_columns_and_its_gradient_equal_numpy(widths):
    """A different cotangent per block: a backward that put the blocks' gradients in the wrong
    order or dropped one would not match."""
    rng = np.random.default_rng(sum(widths) + len(set(widths)))
    y = rng.normal(size=(2, 3, sum(widths))).astype(np.float32)
    parts, vjp = jax.vjp(lambda y: layers.split_columns(y, widths), y)
    np.testing.assert_array_equal(parts[1], y[..., widths[0]:widths[0] + widths[1]])
    assert [p.shape[-1] for p in parts] == list(widths)
    cotangents = [rng.normal(size=p.shape).astype(np.float32) for p in parts]
    (grad,) = vjp(cotangents)
    np.testing.assert_array_equal(grad, np.concatenate(cotangents, axis=-1))


@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_through_the_context_equals_projected_keys_and_values(with_mask):
    """A MAP head's one query over a context (`Attention.attend_context`, as AttentionPool
    runs it) against jax.nn.dot_product_attention on the context's projected keys and values,
    with biases away from 0 (the key bias must drop out, the value bias must not), a key mask."""
    rng = np.random.default_rng(1)
    attention = layers.Attention(num_heads=2, width=8)
    query_in = rng.normal(size=(3, 1, 8)).astype(np.float32)
    context = rng.normal(size=(3, 6, 8)).astype(np.float32)
    mask = (np.arange(6) < np.array([6, 2, 4])[:, None])[:, None, None, :] if with_mask else None
    params = attention.init(jax.random.key(0), query_in, context)
    params = jax.tree.map(lambda p: p + rng.normal(size=p.shape).astype(np.float32), params)
    assert attention.apply(params, 1, 6, method="reads_context_directly")

    def projected(p, q, c):
        kv = attention.apply(p, c, method="keys_values")
        return attention.apply(p, q, mask=mask, context_kv=kv)

    def direct(p, q, c):
        return attention.apply(p, q, c, method=lambda attn, q, c: attn.attend_context(
            attn.queries(q), c, None, mask, None))

    cotangent = rng.normal(size=(3, 1, 8)).astype(np.float32)
    want, want_vjp = jax.vjp(projected, params, query_in, context)
    got, got_vjp = jax.vjp(direct, params, query_in, context)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got_grads, want_grads = got_vjp(cotangent), want_vjp(cotangent)
    # The key bias's true gradient is 0 (the softmax drops it): exactly 0 here, float
    # rounding (~2e-5 at these logits) through the projected keys, and as much in the others.
    got_key_bias, want_key_bias = (g[0]["params"]["key"]["bias"].value
                                   for g in (got_grads, want_grads))
    np.testing.assert_array_equal(got_key_bias, 0.0)
    np.testing.assert_allclose(want_key_bias, 0.0, atol=1e-4)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_grads),
                            jax.tree.leaves(want_grads), strict=True):
        if "key" not in jax.tree_util.keystr(path) or "kernel" in jax.tree_util.keystr(path):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=3e-5,
                                       err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_gelu_and_its_gradient_equal_numpy(jit):
    """The tanh GELU's backward (the cdf read back as g / h) against the float64 derivative of
    0.5 h (1 + tanh(u)), u = sqrt(2 / pi) (h + 0.044715 h^3), over [-12, 12] with h = 0, tiny
    and saturated inputs; autodiff of nn.gelu is off by up to 3.5e-6 here."""
    h = np.concatenate([np.linspace(-12, 12, 4801), [0, 1e-30, -1e-30, 1e-7, -30, 30]])
    h = h.astype(np.float32)
    cotangent = RNG.normal(size=h.shape).astype(np.float32)
    y, vjp = jax.vjp(jax.jit(layers.gelu) if jit else layers.gelu, h)
    (grad,) = vjp(cotangent)
    h64 = h.astype(np.float64)
    u_prime = np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * h64**2)
    tanh = np.tanh(np.sqrt(2 / np.pi) * (h64 + 0.044715 * h64**3))
    derivative = 0.5 * (1 + tanh) + 0.5 * h64 * (1 - tanh**2) * u_prime
    if not jit:  # the forward is nn.gelu's, op for op (jit may fuse it differently)
        np.testing.assert_array_equal(y, nn.gelu(h, approximate=True))
    np.testing.assert_allclose(y, 0.5 * h64 * (1 + tanh), rtol=0, atol=2e-6)
    np.testing.assert_allclose(grad / cotangent, derivative, rtol=0, atol=1e-5)
