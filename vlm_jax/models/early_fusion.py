"""Chameleon-style early fusion: images are VQ codes inside the LM's one vocabulary.

    one vocabulary = the text tokenizer's ids (words, BOS/EOS/PAD, <boi> <image> <eoi>)
                     + codebook_size image codes <img_0> .. <img_{K-1}> at the end
                       (data.image_codes = K makes the tokenizer add them: code k is id
                        code_offset + k)
    sequence       = BOS (<boi> code*T <eoi> caption)* closing EOS, or caption-first
                     BOS (caption <boi> code*T <eoi>)* closing EOS; plain causal attention
                     everywhere (images are generated token by token)
    transformer    = models/lm.py's LM: RMSNorm, SwiGLU, RoPE, GQA, QK-norm per head before
                     RoPE (qk_norm_type "head_layernorm" is Chameleon's), norm_position
                     "output" for Chameleon-34B's x + norm(f(x))

The model *is* an `LM` (`from_config` builds one; its parameter tree is the LM's). This file
holds what the fusion adds around it, as pure functions of arrays: the image vocabulary,
writing VQ codes into the interleaved format's placeholders, the caption-first reordering, and
the two logit operations text-to-image sampling needs (restriction to image codes, classifier-
free guidance).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import lm


@dataclasses.dataclass(frozen=True)
class ImageVocabulary:
    """Where the image tokens sit in the one vocabulary (hashable: static under jit)."""

    code_offset: int  # id of image code 0
    codebook_size: int
    boi_id: int
    eoi_id: int
    placeholder_id: int  # the interleaved format's <image>, overwritten by codes
    bos_id: int
    eos_id: int
    pad_id: int
    # CM3's sentinels (configs/cm3leon.py adds them as data.special_tokens); -1 without them.
    mask_id: int = -1
    infill_id: int = -1

    def is_code(self, tokens: jax.Array) -> jax.Array:
        return (tokens >= self.code_offset) & (tokens < self.code_offset + self.codebook_size)


def image_vocabulary(tokenizer, codebook_size: int) -> ImageVocabulary:
    """The ImageVocabulary of a tokenizer built with data.image_codes = codebook_size (the codes
    must be its last ids, contiguous, after every text token)."""
    if codebook_size < 1:
        raise ValueError("early fusion needs data.image_codes = the VQ codebook size (> 0)")
    offset = tokenizer.token_id("<img_0>")
    last = tokenizer.token_id(f"<img_{codebook_size - 1}>")
    if last != offset + codebook_size - 1 or last != tokenizer.vocab_size - 1:
        raise ValueError(f"the tokenizer's image codes <img_0>..<img_{codebook_size - 1}> must be "
                         f"its last {codebook_size} ids; got {offset}..{last} of "
                         f"{tokenizer.vocab_size}: set data.image_codes to the VQ codebook size")
    cm3 = [tokenizer.special_ids.get(t, -1) for t in ("<mask>", "<infill>")]
    return ImageVocabulary(offset, codebook_size, *(tokenizer.token_id(t) for t in (
        "<boi>", "<eoi>", "<image>")), tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
        *cm3)


def fuse_codes(text_tokens: jax.Array, codes: jax.Array, image_positions: jax.Array,
               image_valid: jax.Array, code_offset: int) -> jax.Array:
    """Write image m's codes [B, M, T] (+ code_offset) over its T placeholders, which start at
    image_positions [B, M] in text_tokens [B, L]; invalid images (image_valid False) are left
    alone. -> int32 [B, L]."""
    batch, _, per_image = codes.shape
    length = text_tokens.shape[1]
    where = image_positions[..., None] + jnp.arange(per_image)  # [B, M, T]
    where = jnp.where(image_valid[..., None], where, length)  # out of range: dropped
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None, None], where.shape)
    return text_tokens.at[rows, where].set((codes + code_offset).astype(text_tokens.dtype),
                                           mode="drop")


def caption_first(tokens: jax.Array, segment_ids: jax.Array, flip: jax.Array,
                  eos_id: int) -> jax.Array:
    """Move each caption before its image in the rows where flip [B] is True.

    The interleaved format numbers its spans (segment_ids: image 0 = 1, caption 0 = 2,
    image 1 = 3, ...; the closing sentence after; 0 on padding). Position 0 (BOS) stays first,
    EOS and padding stay last; inside a flipped row span 2m + 2 (caption m) sorts before span
    2m + 1 (image m). A stable sort, so tokens keep their order within a span. -> [B, L].
    """
    length = tokens.shape[1]
    span = segment_ids - 1  # image m: 2m, caption m: 2m + 1, closing: 2 * count
    swapped = jnp.where(span % 2 == 0, span + 1, span - 1)
    # The closing span (2 * count, no caption after it) must not swap with a missing caption.
    count = (jnp.max(segment_ids, axis=1, keepdims=True)) // 2
    is_pair = span < 2 * count
    order = jnp.where(flip[:, None] & is_pair, swapped, span)
    last = 2 * length + 2  # after every span
    order = jnp.where((segment_ids == 0) | (tokens == eos_id), last, order)
    order = order.at[:, 0].set(-1)  # BOS
    key = order * length + jnp.arange(length)  # ties keep position order
    permutation = jnp.argsort(key, axis=1)
    return jnp.take_along_axis(tokens, permutation, axis=1)


def restrict_to_codes(logits: jax.Array, vocab: ImageVocabulary) -> jax.Array:
    """logits [..., V] with every non-image-code id at -inf: an image position samples only
    codes."""
    ids = jnp.arange(logits.shape[-1])
    return jnp.where(vocab.is_code(ids), logits, -jnp.inf)


def guided_logits(conditional: jax.Array, unconditional: jax.Array,
                  guidance_scale: float) -> jax.Array:
    """Classifier-free guidance: uncond + s * (cond - uncond) (s = 1: the conditional logits;
    s = 0: the unconditional ones)."""
    return unconditional + guidance_scale * (conditional - unconditional)


def from_config(model_config: ml_collections.ConfigDict, vocab_size: int,
                dtype=jnp.float32) -> lm.LM:
    """`model.name = "early_fusion"`: the LM over the fused vocabulary (the tokenizer's, image
    codes included); its fields from `model` as for `model.name = "lm"`."""
    return lm.from_config(model_config, vocab_size, dtype)
