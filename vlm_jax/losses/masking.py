"""Loss terms of the masking family on masked positions: cross-entropy on codes or tokens,
per-patch MSE on pixels, and the 2-way image-text matching loss. Each returns (loss, metrics)
and averages over the weighted positions of the whole batch (HF FLAVA's token mean)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    weights = weights.astype(values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array):
    """Mean CE of logits [B, N, V] against int targets [B, N] over positions with weight 1."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    loss = _weighted_mean(nll, weights)
    accuracy = _weighted_mean((logits.argmax(-1) == targets).astype(jnp.float32), weights)
    return loss, {"accuracy": accuracy}


def masked_pixel_mse(predicted: jax.Array, targets: jax.Array, weights: jax.Array):
    """MAE's loss: mean over weighted patches of the per-patch mean squared error
    ([B, N, P] predictions and targets, weights [B, N])."""
    per_patch = jnp.mean(jnp.square(predicted.astype(jnp.float32) - targets), axis=-1)
    return _weighted_mean(per_patch, weights), {}


def matching_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None):
    """2-way CE of ITM logits [B, 2] against labels [B] (1: the pair matches)."""
    if weights is None:
        weights = jnp.ones(labels.shape, bool)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    accuracy = _weighted_mean((logits.argmax(-1) == labels).astype(jnp.float32), weights)
    return _weighted_mean(nll, weights), {"accuracy": accuracy}
