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


def softmax_loss_on_logits(logits: jax.Array, label_smoothing: float = 0.0,
                           valid: jax.Array | None = None):
    """0.5 * [CE over each row (image -> texts) + CE over each column (text -> images)].

    `label_smoothing` e: each CE's target is (1 - e) on the pair + e / B spread over all B
    (torch's `cross_entropy(label_smoothing=e)`; BLIP-2's ITC uses 0.1).
    `valid` bool [B] (None: every row): the loss of the valid rows alone, as if the others
    were not in the batch (neither positives nor negatives; their gradient is 0).
    """
    if valid is not None:
        return _masked_softmax_loss(logits, label_smoothing, valid)
    labels = jnp.arange(logits.shape[0])
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    loss = 0.5 * (i2t + t2i)
    if label_smoothing:
        # CE to the uniform target minus CE to the pair, mixed in by e: per row or column it is
        # e * (pair logit - mean logit), and the row and column means sum alike.
        loss = loss + label_smoothing * (jnp.mean(jnp.diagonal(logits)) - jnp.mean(logits))
    return loss, {"loss": loss, "i2t_accuracy": _diagonal_accuracy(logits)}


def sigmoid_loss_on_logits(logits: jax.Array, valid: jax.Array | None = None):
    """-(1/B) sum_ij log sigmoid(z_ij logits_ij), z_ii = +1 and z_ij = -1 otherwise; with
    `valid` bool [B], over valid pairs (i, j) only and B the number of valid rows."""
    labels = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0
    if valid is not None:
        keep = valid[:, None] & valid[None, :]
        loss = -jnp.sum(jnp.where(keep, jax.nn.log_sigmoid(labels * logits), 0.0)) / _count(valid)
        return loss, {"loss": loss, "i2t_accuracy": _diagonal_accuracy(logits, valid)}
    loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]
    return loss, {"loss": loss, "i2t_accuracy": _diagonal_accuracy(logits)}


def masked_logits(logits: jax.Array, keep: jax.Array) -> jax.Array:
    """`logits` where `keep`, else the dtype's most negative value: a log-sum-exp gives those
    entries weight exp(-huge) = 0 exactly and no gradient, and an all-masked row stays finite
    (so no NaN reaches a gradient that a `where` later discards)."""
    return jnp.where(keep, logits, jnp.finfo(logits.dtype).min)


def _count(valid: jax.Array) -> jax.Array:
    """The number of valid rows, at least 1 (an all-invalid batch has loss 0, not 0 / 0)."""
    return jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)


def _masked_softmax_loss(logits, label_smoothing, valid):
    """`softmax_loss_on_logits` of the valid rows and columns, normalised by their count V."""
    keep = valid[:, None] & valid[None, :]
    kept = masked_logits(logits, keep)
    count = _count(valid)
    row_lse = jax.nn.logsumexp(kept, axis=1)
    column_lse = jax.nn.logsumexp(kept, axis=0)
    positive = jnp.diagonal(logits)
    # Separate sums: an invalid row's two masked normalisers would overflow when added.
    loss_sum = (0.5 * (jnp.sum(jnp.where(valid, row_lse, 0.0))
                       + jnp.sum(jnp.where(valid, column_lse, 0.0)))
                - (1 - label_smoothing) * jnp.sum(jnp.where(valid, positive, 0.0))
                - label_smoothing / count * jnp.sum(jnp.where(keep, logits, 0.0)))
    loss = loss_sum / count
    return loss, {"loss": loss, "i2t_accuracy": _diagonal_accuracy(logits, valid)}


LOSSES_ON_LOGITS = {"softmax": softmax_loss_on_logits, "sigmoid": sigmoid_loss_on_logits}


def _diagonal_accuracy(logits: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Fraction of images whose own caption has the strictly highest score in their row
    (with `valid`: of the valid images, among the valid captions)."""
    diagonal = jnp.diagonal(logits)
    others = jnp.where(jnp.eye(logits.shape[0], dtype=bool), -jnp.inf, logits)
    if valid is None:
        return jnp.mean(diagonal > others.max(axis=1))
    others = jnp.where(valid[None, :], others, -jnp.inf)
    correct = valid & (diagonal > others.max(axis=1))
    return jnp.sum(correct.astype(jnp.float32)) * (1.0 / _count(valid))  # jnp.mean's rounding
