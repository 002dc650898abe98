"""`Encoder(pool_rows=...)`: the last block run on the pooled rows alone equals the full
encoder's output at those rows, in value and in every parameter's gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models.layers import Encoder, Execution

B, L, D = 3, 7, 32
X = np.random.default_rng(0).standard_normal((B, L, D)).astype(np.float32)
ROWS = np.array([[6, 0], [3, 3], [1, 5]], np.int32)  # two rows per example, in any order
KEY_MASK = np.arange(L)[None, None, None, :] < np.array([7, 4, 6])[:, None, None, None]
# Per-query block-causal mask: tokens 0-2 see each other, 3-6 see everything before them.
BLOCK_MASK = np.broadcast_to(np.tril(np.ones((L, L), bool)) | (np.arange(L) < 3)[None, :],
                             (B, 1, L, L))

CASES = {
    "causal": dict(is_causal=True),
    "per-query mask": dict(mask=BLOCK_MASK),
    "causal and per-query mask": dict(is_causal=True, mask=BLOCK_MASK),
    "padded to 8, key mask": dict(mask=KEY_MASK, execution=Execution(pad_multiple=8)),
    "post-norm, remat": dict(block=(("norm_position", "post"),),
                             execution=Execution(remat="full")),
    "rope, qk-norm, gqa, rmsnorm": dict(is_causal=True, block=(
        ("rope_theta", 10_000.0), ("qk_norm", True), ("num_kv_heads", 2), ("norm", "rmsnorm"))),
    "bidirectional, no final norm": dict(final_norm=False),
}


def _encoder(case):
    fields = {k: v for k, v in case.items() if k in ("execution", "block", "final_norm")}
    return Encoder(depth=2, num_heads=4, mlp_dim=64, **fields)


@pytest.mark.parametrize("name", list(CASES))
def test_rows_of_the_last_block_equal_the_full_output_at_those_rows(name):
    case = CASES[name]
    encoder = _encoder(case)
    call = dict(mask=case.get("mask"), is_causal=case.get("is_causal", False))
    params = encoder.init(jax.random.PRNGKey(0), X, **call)
    weights = np.random.default_rng(1).standard_normal((B, ROWS.shape[1], D)).astype(np.float32)

    def from_rows(p):
        full, rows = encoder.apply(p, X, pool_rows=ROWS, **call)
        return jnp.sum(rows * weights), (full, rows)

    def from_full(p):
        full = encoder.apply(p, X, **call)
        rows = jnp.take_along_axis(full, ROWS[..., None], axis=1)
        return jnp.sum(rows * weights), rows

    (_, (full, rows)), grads = jax.value_and_grad(from_rows, has_aux=True)(params)
    (_, reference), reference_grads = jax.value_and_grad(from_full, has_aux=True)(params)
    np.testing.assert_allclose(rows, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(full, encoder.apply(params, X, **call), rtol=1e-6, atol=1e-6)
    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                                 jax.tree_util.tree_leaves(reference_grads)):
        # Softmax ignores a key bias: its true gradient is 0, and both paths give ~1e-8.
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))


def test_a_pooled_tower_leaves_the_unpooled_rows_of_its_last_block_to_dead_code():
    """What the rows path is for: with only the rows used, the compiled encoder skips the last
    block's queries, output projection and MLP on the other rows, and its keys and values
    (`Attention.attend_context` moves the pooled rows' queries through the key and value
    kernels instead). Per row and block the projections are 8 D^2 FLOPs and the MLP 8 D^2, so
    2 blocks x 21 rows cost 672 D^2 against 21 x 16 (block 0) + 6 x 12 (the pooled rows'
    queries, output projection and MLP) + 6 x 7.5 (each row's query through the key and value
    kernels, 2 x 2 D^2, and its logits and weighted sum over 7 rows, 2 x 1.75 D^2) = 453 D^2:
    0.67 of the full output's FLOPs (attention adds a little to both). Projecting block 1's
    keys and values for all 21 rows instead (21 x 4 D^2) would make it 0.73."""
    encoder = Encoder(depth=2, num_heads=4, mlp_dim=4 * D)
    params = encoder.init(jax.random.PRNGKey(0), X)

    def flops(fn):
        return jax.jit(fn).lower(params).compile().cost_analysis()["flops"]

    rows_only = flops(lambda p: encoder.apply(p, X, pool_rows=ROWS)[1])
    full = flops(lambda p: encoder.apply(p, X))
    assert 0.63 < rows_only / full < 0.70
