"""Contrastive losses on global [B, D] embeddings: softmax InfoNCE (CLIP) and sigmoid (SigLIP),
and the same two on pair logits [B, B] for scores that are not a dot product (Llip).

Pure functions of L2-normalised embeddings; `logit_scale` is the multiplier (already
exponentiated). Each returns `(loss, metrics)`. Under `jax.jit` on global arrays these are the
GSPMD variants: XLA inserts the collectives; the explicit shard_map variants live beside them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def softmax_contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array):
    """Symmetric InfoNCE: 0.5 * [CE(image -> text rows) + CE(text -> image columns)]."""
    return softmax_loss_on_logits(logit_scale * image_emb @ text_emb.T)


def sigmoid_contrastive_loss(
    image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array
):
    """SigLIP: -(1/B) sum_ij log sigmoid(z_ij (t x_i.y_j + b)), z_ii = +1, z_ij = -1 otherwise."""
    return sigmoid_loss_on_logits(logit_scale * image_emb @ text_emb.T + logit_bias)


# On pair logits [B, B] (matching pairs on the diagonal), for models whose score of a pair is not
# a dot product of two embeddings (Llip); the functions above are these on t x.y (+ b).


def softmax_loss_on_logits(logits: jax.Array, label_smoothing: float = 0.0):
    """0.5 * [CE over each row (image -> texts) + CE over each column (text -> images)].

    `label_smoothing` e: each CE's target is (1 - e) on the pair + e / B spread over all B
    (torch's `cross_entropy(label_smoothing=e)`; BLIP-2's ITC uses 0.1).
    """
    labels = jnp.arange(logits.shape[0])
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    loss = 0.5 * (i2t + t2i)
    if label_smoothing:
        # CE to the uniform target minus CE to the pair, mixed in by e: per row or column it is
        # e * (pair logit - mean logit), and the row and column means sum alike.
        loss = loss + label_smoothing * (jnp.mean(jnp.diagonal(logits)) - jnp.mean(logits))
    return loss, {"loss": loss, "i2t_accuracy": _diagonal_accuracy(logits)}


def sigmoid_loss_on_logits(logits: jax.Array):
    """-(1/B) sum_ij log sigmoid(z_ij logits_ij), z_ii = +1 and z_ij = -1 otherwise."""
    labels = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0
    loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]
    return loss, {"loss": loss, "i2t_accuracy": _diagonal_accuracy(logits)}


LOSSES_ON_LOGITS = {"softmax": softmax_loss_on_logits, "sigmoid": sigmoid_loss_on_logits}


def _diagonal_accuracy(logits: jax.Array) -> jax.Array:
    """Fraction of images whose own caption has the strictly highest score in their row."""
    diagonal = jnp.diagonal(logits)
    others = jnp.where(jnp.eye(logits.shape[0], dtype=bool), -jnp.inf, logits)
    return jnp.mean(diagonal > others.max(axis=1))
