"""Generative losses on token logits: captioning cross-entropy and sequence log-likelihoods.

Pure functions of `logits` [B, L, V] whose position t predicts `targets[:, t]`, and a bool
`mask` [B, L] that is True on the tokens that count (padding is False). Softmax statistics are
taken in float32 whatever the logits' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets[b, t]) under softmax(logits[b, t]): [B, L] float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def caption_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                 label_smoothing: float = 0.0):
    """Teacher-forcing cross-entropy averaged over the unmasked tokens of the whole batch.

    Token-weighted like torch's `CrossEntropyLoss(ignore_index=pad)` (open_clip's CoCaLoss), so
    a long caption counts more than a short one. `label_smoothing` e: the target is (1 - e) on
    the token + e / V over the vocabulary (torch's `label_smoothing`; BLIP-2's ITG uses 0.1).
    Returns `(loss, metrics)` with "caption_loss" and "token_accuracy" (argmax equals the
    target, over unmasked tokens).
    """
    mask = mask.astype(jnp.float32)
    num_tokens = jnp.maximum(mask.sum(), 1.0)  # an all-padding batch gives 0, not NaN
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, L, V]
    token_nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        token_nll = ((1 - label_smoothing) * token_nll
                     - label_smoothing * jnp.mean(log_probs, axis=-1))
    loss = jnp.sum(token_nll * mask) / num_tokens
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    accuracy = jnp.sum(correct * mask) / num_tokens
    return loss, {"caption_loss": loss, "token_accuracy": accuracy}


def sequence_log_likelihood(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum over the unmasked tokens of log p(target): [B] float32, one score per sequence."""
    return jnp.sum(token_log_probs(logits, targets) * mask.astype(jnp.float32), axis=-1)


def z_loss(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of log(Z)^2 over the unmasked positions, Z = sum_v exp(logits[..., v]) (PaLM,
    Chameleon): it keeps the softmax normaliser near 1, so logits cannot drift upwards."""
    mask = mask.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    return jnp.sum(log_z**2 * mask) / jnp.maximum(mask.sum(), 1.0)
