"""BLIP-2 stage 1's image-text matching: hard negatives drawn from the ITC scores, and the
3B-way matching cross-entropy (the ITC term is the contrastive one, `losses/terms.py`, on the
max-over-queries score; ITG is `generative.caption_loss` with label smoothing).

For each image one negative text and for each text one negative image, drawn from the softmax
of that row's (column's) contrastive logits with the pair itself excluded, without gradient:
texts the model already confuses with the image are drawn most often.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vlm_jax.losses import hard_negatives


def sample_hard_negatives(rng: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(negative_text [B], negative_image [B]) indices from the ITC logits [B, B] (image i,
    text j; pairs on the diagonal): negative_text[i] ~ softmax_j(logits[i]) over j != i,
    negative_image[j] ~ softmax_i(logits[:, j]) over i != j. BLIP-2 excludes the pair only
    (not other rows with the same caption, as MaskVLM does): the shared sampler with the
    diagonal as the positives."""
    positives = jnp.eye(logits.shape[0], dtype=bool)
    negative_text, negative_image, _ = hard_negatives.sample_hard_negatives(
        rng, logits, positives)
    return negative_text, negative_image


def matching_batch(image_rows: jax.Array, text_rows: jax.Array, negative_text: jax.Array,
                   negative_image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The 3B ITM pairs: (images, texts) = ((i, i-, i), (t, t, t-)) row-wise, i.e. the aligned
    pairs, each text with a negative image, each image with a negative text (BLIP-2's order)."""
    images = jnp.concatenate([image_rows, image_rows[negative_image], image_rows], axis=0)
    texts = jnp.concatenate([text_rows, text_rows, text_rows[negative_text]], axis=0)
    return images, texts


def itm_loss(itm_logits: jax.Array):
    """Cross-entropy of the 2-way ITM logits [3B, 2] of `matching_batch`'s pairs: label 1
    (matched) for the first B, 0 for the 2B negatives; mean over the 3B pairs.
    Returns (loss, {"itm_loss", "itm_accuracy"})."""
    batch = itm_logits.shape[0] // 3
    labels = jnp.concatenate([jnp.ones(batch, jnp.int32), jnp.zeros(2 * batch, jnp.int32)])
    loss = optax.softmax_cross_entropy_with_integer_labels(
        itm_logits.astype(jnp.float32), labels).mean()
    accuracy = jnp.mean(jnp.argmax(itm_logits, axis=-1) == labels)
    return loss, {"itm_loss": loss, "itm_accuracy": accuracy}
