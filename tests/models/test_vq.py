"""The VQ quantiser against NumPy: nearest codes by brute force, the EMA update formula, dead-code
restarts, and the straight-through gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.losses import vq as vq_losses
from vlm_jax.models import vq

K, D = 12, 4
SETTINGS = dict(decay=0.9, epsilon=1e-3, dead_count=0.0, restart_after=0, restart=False)


def random_state(rng, with_counts=True):
    codebook = rng.normal(size=(K, D)).astype(np.float32)
    count = rng.uniform(0.5, 3.0, K).astype(np.float32) if with_counts else np.ones(K, np.float32)
    return {"codebook": codebook, "ema_count": count,
            "ema_sum": (codebook * count[:, None]).astype(np.float32),
            "unused_steps": rng.integers(0, 5, K).astype(np.float32)}


def test_nearest_codes_match_brute_force():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 4, 5, D)).astype(np.float32)
    codebook = rng.normal(size=(K, D)).astype(np.float32)
    distances = ((z[..., None, :] - codebook) ** 2).sum(-1)  # [3, 4, 5, K]
    codes = np.asarray(vq.nearest_codes(jnp.asarray(z), jnp.asarray(codebook)))
    np.testing.assert_array_equal(codes, distances.argmin(-1))
    assert codes.dtype == np.int32 and len(np.unique(codes)) > 3  # not a degenerate case


def test_ema_update_matches_the_numpy_formula():
    rng = np.random.default_rng(1)
    state = random_state(rng)
    z = rng.normal(size=(2, 3, 3, D)).astype(np.float32)
    codes = rng.integers(0, K - 3, (2, 3, 3)).astype(np.int32)  # the last 3 codes unused
    new, metrics = vq.codebook_update(
        jax.tree_util.tree_map(jnp.asarray, state), jnp.asarray(z), jnp.asarray(codes),
        jax.random.PRNGKey(0), mode="ema", **SETTINGS)
    d, eps = SETTINGS["decay"], SETTINGS["epsilon"]
    flat_z, flat_codes = z.reshape(-1, D), codes.reshape(-1)
    n = np.bincount(flat_codes, minlength=K).astype(np.float64)
    s = np.zeros((K, D))
    for vector, code in zip(flat_z, flat_codes):
        s[code] += vector
    count = d * state["ema_count"] + (1 - d) * n
    ema_sum = d * state["ema_sum"] + (1 - d) * s
    total = count.sum()
    smoothed = (count + eps) / (total + K * eps) * total
    np.testing.assert_allclose(new["ema_count"], count, rtol=1e-6)
    np.testing.assert_allclose(new["ema_sum"], ema_sum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["codebook"], ema_sum / smoothed[:, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new["unused_steps"],
                                  np.where(n > 0, 0, state["unused_steps"] + 1))
    p = n[n > 0] / n.sum()
    np.testing.assert_allclose(metrics["perplexity"], np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
    assert int(metrics["codes_used"]) == int((n > 0).sum()) and int(metrics["dead_codes"]) == 0


def test_st_mode_updates_only_the_usage_statistics():
    rng = np.random.default_rng(2)
    state = random_state(rng)
    codes = rng.integers(0, K, (2, 3, 3)).astype(np.int32)
    new, _ = vq.codebook_update(jax.tree_util.tree_map(jnp.asarray, state),
                                jnp.ones((2, 3, 3, D)), jnp.asarray(codes),
                                jax.random.PRNGKey(0), mode="st", **SETTINGS)
    assert sorted(new) == sorted(vq.STATE_PARAMS["st"])


@pytest.mark.parametrize("criterion", ["count", "unused_steps"])
def test_dead_codes_restart_at_batch_vectors(criterion):
    rng = np.random.default_rng(3)
    state = random_state(rng)
    codes = np.arange(2 * 3 * 3).reshape(2, 3, 3) % 6  # codes 6..11 unused this batch
    dead = np.zeros(K, bool)
    dead[[7, 9, 10]] = True
    if criterion == "count":
        state["ema_count"][dead] = 1e-3  # decays below dead_count = 0.01
        settings = {**SETTINGS, "dead_count": 0.01, "restart": True}
    else:
        state["unused_steps"][:] = 0
        state["unused_steps"][dead] = 4  # reaches restart_after = 5 this step
        settings = {**SETTINGS, "restart_after": 5, "restart": True}
    z = rng.normal(size=(2, 3, 3, D)).astype(np.float32)
    new, metrics = vq.codebook_update(jax.tree_util.tree_map(jnp.asarray, state), jnp.asarray(z),
                                      jnp.asarray(codes, jnp.int32), jax.random.PRNGKey(4),
                                      mode="ema", **settings)
    no_restart, _ = vq.codebook_update(jax.tree_util.tree_map(jnp.asarray, state),
                                       jnp.asarray(z), jnp.asarray(codes, jnp.int32),
                                       jax.random.PRNGKey(4), mode="ema", **SETTINGS)
    assert int(metrics["dead_codes"]) == 3
    flat_z = z.reshape(-1, D)
    restarted = np.asarray(new["codebook"])[dead]
    # Each restarted code is exactly one of the batch's vectors, and they are distinct ones.
    matches = [np.flatnonzero(np.all(flat_z == row, axis=1)) for row in restarted]
    assert all(len(m) == 1 for m in matches) and len({int(m[0]) for m in matches}) == 3
    np.testing.assert_array_equal(np.asarray(new["ema_sum"])[dead], restarted * vq.INITIAL_COUNT)
    np.testing.assert_array_equal(np.asarray(new["ema_count"])[dead], vq.INITIAL_COUNT)
    np.testing.assert_array_equal(np.asarray(new["unused_steps"])[dead], 0)
    for name in vq.STATE_PARAMS["ema"]:  # the live codes follow the plain EMA update
        np.testing.assert_array_equal(np.asarray(new[name])[~dead],
                                      np.asarray(no_restart[name])[~dead])


def test_straight_through_gradients():
    """The encoder output gets the decoder's gradient at the quantised vectors (+ the
    commitment term's); the codebook gets the codebook loss's gradient alone."""
    model = vq.VQVAE(channels=(8,), res_blocks=1, code_dim=D, codebook_size=K,
                     quantizer_mode="st")
    images = jnp.asarray(np.random.default_rng(5).integers(0, 256, (2, 8, 8, 3)), jnp.uint8)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), images)["params"])
    beta = 0.25
    decode = lambda p, v: model.apply({"params": p}, v, method=lambda m, v: m.decoder(v))
    recon_of = lambda p, v: vq_losses.reconstruction_loss(decode(p, v), vq.to_pixels(images))
    z = model.apply({"params": params}, images, method=vq.VQVAE.encode)  # [2, 4, 4, D]
    codes = np.asarray(vq.nearest_codes(z, params["quantizer"]["codebook"]))
    assert len(np.unique(codes)) > 1

    def loss_of_z(z):
        quantized = jnp.take(params["quantizer"]["codebook"], codes, axis=0)
        return (recon_of(params, vq.straight_through(z, quantized))
                + beta * vq_losses.commitment_loss(z, quantized)
                + vq_losses.codebook_loss(z, quantized))

    quantized = np.asarray(params["quantizer"]["codebook"])[codes]
    grad_z = jax.grad(loss_of_z)(z)
    expected = (jax.grad(lambda q: recon_of(params, q))(jnp.asarray(quantized))
                + beta * 2 * (np.asarray(z) - quantized) / z.size)
    np.testing.assert_allclose(grad_z, expected, rtol=1e-5, atol=1e-8)

    # The codebook's raw gradient through the whole model: only the codebook term reaches it.
    def total_loss(p):
        reconstruction, extras = model.apply({"params": p}, images)
        return (vq_losses.reconstruction_loss(reconstruction, vq.to_pixels(images))
                + beta * vq_losses.commitment_loss(extras["z"], extras["quantized"])
                + vq_losses.codebook_loss(extras["z"], extras["quantized"]))

    grad_codebook = np.asarray(jax.grad(total_loss)(params)["quantizer"]["codebook"])
    expected_codebook = np.zeros((K, D))
    for vector, code in zip(np.asarray(z).reshape(-1, D), codes.reshape(-1)):
        expected_codebook[code] += 2 * (np.asarray(params["quantizer"]["codebook"])[code]
                                        - vector) / z.size
    np.testing.assert_allclose(grad_codebook, expected_codebook, rtol=1e-5, atol=1e-8)


def test_tokenize_detokenize_shapes_and_codes_are_the_nearest():
    model = vq.VQVAE(channels=(8, 8), res_blocks=1, code_dim=D, codebook_size=K)
    images = jnp.asarray(np.random.default_rng(6).integers(0, 256, (3, 16, 16, 3)), jnp.uint8)
    params = nn.unbox(model.init(jax.random.PRNGKey(1), images)["params"])
    codes = vq.tokenize(model, params, images)
    assert codes.shape == (3, 16) and codes.dtype == jnp.int32
    z = model.apply({"params": params}, images, method=vq.VQVAE.encode)
    np.testing.assert_array_equal(codes, vq.nearest_codes(z, params["quantizer"]["codebook"])
                                  .reshape(3, 16))
    rebuilt = vq.detokenize(model, params, codes)
    assert rebuilt.shape == (3, 16, 16, 3) and rebuilt.dtype == jnp.uint8
    # detokenize decodes exactly the codes' vectors: the forward pass's reconstruction.
    reconstruction, _ = model.apply({"params": params}, images)
    np.testing.assert_array_equal(rebuilt, vq.to_uint8(reconstruction))


def test_image_size_not_a_multiple_of_the_downsampling_is_named():
    model = vq.VQVAE(channels=(8, 8), res_blocks=1, code_dim=D, codebook_size=K)
    with pytest.raises(ValueError, match=r"not a multiple of the encoder's downsampling 4"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 10, 3), jnp.uint8))
