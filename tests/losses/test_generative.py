"""Captioning cross-entropy and sequence log-likelihood against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.losses import generative

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(3, 5, 7)).astype(np.float32) * 3  # [B, L, V]
TARGETS = RNG.integers(1, 7, size=(3, 5)).astype(np.int32)
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], bool)


def _token_log_probs(logits, targets):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]


def test_caption_loss_is_the_mean_over_unpadded_tokens():
    loss, metrics = generative.caption_loss(LOGITS, TARGETS, MASK)
    expected = -_token_log_probs(LOGITS, TARGETS)[MASK].mean()  # 8 tokens, token-weighted
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["caption_loss"], expected, rtol=1e-5)
    accuracy = (LOGITS.argmax(-1) == TARGETS)[MASK].mean()
    np.testing.assert_allclose(metrics["token_accuracy"], accuracy, rtol=1e-6)


def test_padding_has_no_effect_on_the_loss_or_its_gradient():
    changed = LOGITS.copy()
    changed[~MASK] = RNG.normal(size=changed[~MASK].shape) * 10
    np.testing.assert_allclose(generative.caption_loss(changed, TARGETS, MASK)[0],
                               generative.caption_loss(LOGITS, TARGETS, MASK)[0], rtol=1e-6)
    grads = jax.grad(lambda x: generative.caption_loss(x, TARGETS, MASK)[0])(jnp.asarray(LOGITS))
    assert np.all(np.asarray(grads)[~MASK] == 0) and np.any(np.asarray(grads)[MASK] != 0)


def test_an_all_padding_batch_gives_zero_not_nan():
    loss, metrics = generative.caption_loss(LOGITS, TARGETS, np.zeros_like(MASK))
    assert float(loss) == 0.0 and float(metrics["token_accuracy"]) == 0.0


def test_bfloat16_logits_are_scored_in_float32():
    loss, _ = generative.caption_loss(jnp.asarray(LOGITS, jnp.bfloat16), TARGETS, MASK)
    assert loss.dtype == jnp.float32
    rounded = np.asarray(jnp.asarray(LOGITS, jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(loss, -_token_log_probs(rounded, TARGETS)[MASK].mean(), rtol=1e-5)


def test_sequence_log_likelihood_sums_unpadded_token_log_probs():
    scores = generative.sequence_log_likelihood(LOGITS, TARGETS, MASK)
    expected = np.where(MASK, _token_log_probs(LOGITS, TARGETS), 0.0).sum(-1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert scores.shape == (3,)
