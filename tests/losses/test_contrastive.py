"""Both contrastive losses against NumPy references: value and analytic gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.losses.contrastive import sigmoid_contrastive_loss, softmax_contrastive_loss


def _embeddings(batch=12, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim))
    y = x + 0.8 * rng.normal(size=(batch, dim))  # correlated pairs, like a half-trained model
    normalize = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    return normalize(x), normalize(y)


def _log_softmax(a, axis):
    a = a - a.max(axis=axis, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=axis, keepdims=True))


def numpy_softmax(x, y, scale):
    """Value and gradients (dx, dy, dscale) of symmetric InfoNCE, float64."""
    n = len(x)
    sim = x @ y.T
    logits = scale * sim
    rows, cols = _log_softmax(logits, 1), _log_softmax(logits, 0)
    loss = -0.5 * (np.trace(rows) + np.trace(cols)) / n
    dlogits = 0.5 * ((np.exp(rows) - np.eye(n)) + (np.exp(cols) - np.eye(n))) / n
    return loss, scale * dlogits @ y, scale * dlogits.T @ x, np.sum(dlogits * sim)


def numpy_sigmoid(x, y, scale, bias):
    """Value and gradients (dx, dy, dscale, dbias) of the SigLIP loss, float64."""
    n = len(x)
    sim = x @ y.T
    logits = scale * sim + bias
    z = 2 * np.eye(n) - 1
    loss = np.sum(np.logaddexp(0.0, -z * logits)) / n  # -log sigmoid(u) = log(1 + e^-u)
    dlogits = -z / (1.0 + np.exp(z * logits)) / n
    return loss, scale * dlogits @ y, scale * dlogits.T @ x, np.sum(dlogits * sim), np.sum(dlogits)


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_softmax_loss_and_gradients_match_numpy(scale):
    x, y = _embeddings()
    loss_fn = lambda a, b, s: softmax_contrastive_loss(a, b, s)[0]
    value, grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(
        jnp.float32(x), jnp.float32(y), jnp.float32(scale))
    ref = numpy_softmax(x, y, scale)
    np.testing.assert_allclose(value, ref[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (3.0, 0.5), (50.0, -4.0)])
def test_sigmoid_loss_and_gradients_match_numpy(scale, bias):
    x, y = _embeddings(seed=1)
    loss_fn = lambda a, b, s, c: sigmoid_contrastive_loss(a, b, s, c)[0]
    value, grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3))(
        jnp.float32(x), jnp.float32(y), jnp.float32(scale), jnp.float32(bias))
    ref = numpy_sigmoid(x, y, scale, bias)
    np.testing.assert_allclose(value, ref[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_softmax_loss_at_chance_is_log_batch():
    x = np.ones((8, 4)) / 2.0  # every pair equally similar: uniform softmax
    loss, metrics = softmax_contrastive_loss(jnp.float32(x), jnp.float32(x), jnp.float32(10.0))
    np.testing.assert_allclose(loss, np.log(8), rtol=1e-6)
    assert float(metrics["i2t_accuracy"]) == 0.0  # ties never count as correct
