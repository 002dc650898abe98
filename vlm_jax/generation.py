"""Inference drivers of the generative models: caption likelihoods and caption generation.

They drive `model.apply` (the model's `encode_image`, `caption_logits`, `init_cache`,
`decode_step` methods), so they live above the model layer: model files import neither
`vlm_jax.decoding` nor `vlm_jax.losses`. The first serve CoCa (any model with those four
methods and `pad_id`, `bos_id` fields); `prefix_*` serve the VLMs on a pretrained LM, whose
image sits inside the token sequence (Frozen, LLaVA).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax

from vlm_jax import decoding
from vlm_jax.losses import generative

if TYPE_CHECKING:
    from vlm_jax.models.coca import CoCa
    from vlm_jax.models.prefix_vlm import PrefixVLM


def caption_log_likelihood(model: CoCa, params, images: jax.Array,
                           text_tokens: jax.Array) -> jax.Array:
    """log p(text | image) [N]: the sum of the text's token log-probs, padding ignored (EOS
    counts: it says the caption is complete)."""
    _, image_extras = model.apply({"params": params}, images, method=model.encode_image)
    return text_log_likelihood(model, params, image_extras["caption_tokens"], text_tokens)


def text_log_likelihood(model: CoCa, params, caption_tokens: jax.Array,
                        text_tokens: jax.Array) -> jax.Array:
    """`caption_log_likelihood` from the images' caption tokens [N, Q, D] (`encode_image`), so
    scoring many texts per image runs the image tower once (repeat the caption tokens)."""
    logits = model.apply({"params": params}, caption_tokens, text_tokens,
                         method=model.caption_logits)
    return generative.sequence_log_likelihood(logits, text_tokens, text_tokens != model.pad_id)


def generate(model: CoCa, params, images: jax.Array, settings: decoding.DecodeSettings, *,
             eos_id: int, rng: jax.Array | None = None, prompt: jax.Array | None = None):
    """Captions for `images`: (tokens int32 [N, settings.max_len] in the tokenizer's layout,
    tokens then EOS then padding; extras of `decoding.generate`). Jit it with `settings` static."""
    _, image_extras = model.apply({"params": params}, images, method=model.encode_image)
    cache = model.apply({"params": params}, image_extras["caption_tokens"], settings.max_len,
                        method=model.init_cache)

    def step(cache, token, position):
        return model.apply({"params": params}, cache, token, position, method=model.decode_step)

    return decoding.generate(step, cache, settings, bos_id=model.bos_id, eos_id=eos_id,
                             pad_id=model.pad_id, rng=rng, prompt=prompt)


# --- VLMs on a pretrained LM (models/prefix_vlm.py): image embeddings fill placeholders ------


def prefix_log_likelihood(model: PrefixVLM, params, images: jax.Array, tokens: jax.Array,
                          weights: jax.Array) -> jax.Array:
    """Sum of log p(tokens[:, t + 1]) over the positions with weights[:, t + 1] > 0 [N]: the
    log-likelihood of the weighted part of each sequence (BOS first, placeholders inside)."""
    logits = model.apply({"params": params}, images, tokens[:, :-1])
    supervised = weights[:, 1:] > 0
    # Unsupervised targets (placeholders, maybe outside the LM's vocabulary) read token 0.
    targets = jax.numpy.where(supervised, tokens[:, 1:], 0)
    return generative.sequence_log_likelihood(logits, targets, supervised)


def prefix_generate(model: PrefixVLM, params, images: jax.Array,
                    settings: decoding.DecodeSettings, *, eos_id: int, prompt: jax.Array,
                    rng: jax.Array | None = None):
    """Continuations of prompts [N, P] (right-padded with pad_id, no BOS: decoding feeds it;
    placeholders inside) about `images`: (tokens int32 [N, settings.max_len], prompt first,
    extras of `decoding.generate`). The prompt's placeholders take the image embeddings as
    decoding passes them. Jit it with `settings` static."""
    embeddings = model.apply({"params": params}, images, method=model.image_embeddings)
    cache = model.apply({"params": params}, embeddings, settings.max_len, method=model.init_cache)

    def step(cache, token, position):
        return model.apply({"params": params}, cache, token, position, method=model.decode_step)

    return decoding.generate(step, cache, settings, bos_id=model.bos_id, eos_id=eos_id,
                             pad_id=model.pad_id, rng=rng, prompt=prompt)
