"""CM3's causally-masked objective (Aghajanyan et al., 2022; CM3leon uses it): one span of a
document is cut out, a <mask> sentinel left in its place, and the span appended at the end
after an <infill> sentinel; then plain next-token cross-entropy over the whole sequence.

    BOS x_1 .. x_{a-1} [x_a .. x_{b-1}] x_b .. x_E' EOS
 -> BOS x_1 .. x_{a-1} <mask> x_b .. x_E' <infill> x_a .. x_{b-1} EOS   (2 tokens longer)

Spans never cross an image/text boundary: a span is a whole image block (<boi> codes <eoi>) or
a whole text run between image blocks (a caption, or a caption and the closing sentence), read
from the fused tokens themselves (so it holds after the caption-first reordering). BOS, EOS
and padding are in no span. With probability p per document one span, uniform over the
document's spans, is moved; otherwise the document is kept (then padded by 2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlm_jax.models.early_fusion import ImageVocabulary


def span_ids(tokens: jax.Array, vocab: ImageVocabulary) -> jax.Array:
    """int32 [B, L]: 1 + the span number of each token (0 on BOS, EOS, padding). A span
    starts at position 1, at every <boi> and after every <eoi>."""
    position = jnp.arange(tokens.shape[1])
    maskable = (position > 0) & (tokens != vocab.pad_id) & (tokens != vocab.eos_id)
    previous = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=vocab.pad_id)
    start = (position == 1) | (tokens == vocab.boi_id) | (previous == vocab.eoi_id)
    return jnp.where(maskable, jnp.cumsum(start & maskable, axis=1), 0).astype(jnp.int32)


def draw_spans(rng: jax.Array, spans: jax.Array, probability: float) -> jax.Array:
    """int32 [B]: the span each document moves (1..its span count), 0 for none (with
    probability 1 - p, or a document without spans)."""
    count = jnp.max(spans, axis=1)
    use, pick = jax.random.split(rng)
    chosen = 1 + jax.random.randint(pick, count.shape, 0, jnp.maximum(count, 1))
    moved = jax.random.bernoulli(use, probability, count.shape) & (count > 0)
    return jnp.where(moved, chosen, 0).astype(jnp.int32)


def infill(tokens: jax.Array, chosen: jax.Array, vocab: ImageVocabulary) -> jax.Array:
    """tokens [B, L] (BOS .. EOS, right-padded) with span chosen [B] (0: none) moved to the end
    after <infill>, a <mask> in its place (module doc) -> int32 [B, L + 2]."""
    if vocab.mask_id < 0 or vocab.infill_id < 0:
        raise ValueError("the CM3 objective needs <mask> and <infill> in the tokenizer: add them "
                         "to data.special_tokens (configs/cm3leon.py does)")
    spans = span_ids(tokens, vocab)

    def one(row, span, s):  # row [L], span [L], s: the chosen span id
        length = row.shape[0]
        selected = span == s
        a = jnp.argmax(selected)
        n = jnp.sum(selected)
        b = a + n
        end = jnp.sum(row != vocab.pad_id) - 1  # the EOS
        j = jnp.arange(length + 2)
        take = lambda index: row[jnp.clip(index, 0, length - 1)]
        tail = a + 1 + end - b  # where <infill> goes
        out = jnp.where(j < a, take(j), vocab.pad_id)
        out = jnp.where(j == a, vocab.mask_id, out)
        out = jnp.where((j > a) & (j < tail), take(b + j - a - 1), out)
        out = jnp.where(j == tail, vocab.infill_id, out)
        out = jnp.where((j > tail) & (j <= tail + n), take(a + j - tail - 1), out)
        out = jnp.where(j == end + 2, vocab.eos_id, out)
        kept = jnp.concatenate([row, jnp.full((2,), vocab.pad_id, row.dtype)])
        return jnp.where(s > 0, out, kept).astype(jnp.int32)

    return jax.vmap(one)(tokens, spans, chosen)
