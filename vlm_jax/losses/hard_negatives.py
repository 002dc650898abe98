"""Hard negatives for image-text matching, mined from the contrastive similarities (ALBEF,
BLIP, BLIP-2, MaskVLM): each image gets a text, and each text an image, drawn from the softmax
of its similarity row with its positives excluded, so the matching head trains on the pairs
the contrastive towers find hardest to tell apart, not on random (easy) ones.

Sampled, not the argmax: the argmax would keep picking one false-but-plausible pair (often an
unlabelled true match, e.g. a near-duplicate caption) and the head would learn to reject it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_hard_negatives(rng: jax.Array, similarity: jax.Array, positives: jax.Array):
    """(text_of_image int32 [B], image_of_text int32 [B], valid bool [B, 2]).

    similarity [B, B]: s[i, j] of image i and text j (e.g. the ITC logits, temperature
    included); positives bool [B, B]: pairs that must never be drawn (the diagonal, and rows
    with the same caption). Row i's text is drawn with probability softmax_j(s[i, j]) over its
    non-positives, column j's image the same way over the column. No gradient flows through
    the draw. valid[:, 0] / [:, 1] is False where a row / column has no non-positive (every
    caption of the batch is the same); its drawn index is then meaningless.
    """
    similarity = jax.lax.stop_gradient(similarity.astype(jnp.float32))
    positives = positives.astype(bool)
    text_rng, image_rng = jax.random.split(rng)
    masked = jnp.where(positives, -jnp.inf, similarity)  # [B, B]
    text_of_image = jax.random.categorical(text_rng, masked, axis=1)
    image_of_text = jax.random.categorical(image_rng, masked.T, axis=1)
    valid = jnp.stack([~positives.all(axis=1), ~positives.all(axis=0)], axis=1)
    return text_of_image.astype(jnp.int32), image_of_text.astype(jnp.int32), valid


def same_text(text_tokens: jax.Array) -> jax.Array:
    """bool [B, B]: rows whose token sequences are identical (diagonal True): positives."""
    return jnp.all(text_tokens[:, None, :] == text_tokens[None, :, :], axis=-1)
