"""Text generation with `models.lm.LM`: a `vlm_jax.decoding` step function over its KV cache,
and "prompt tokens -> continuation" (prefill the prompt in one pass, then decode).

    step = lm_step_fn(model, params)            # step(cache, token [B], position) -> logits
    tokens, extras = generate_text(model, params, prompt, settings, eos_id=..., pad_id=...)

Models never import `decoding`; these drivers sit above both (as `vlm_jax.generation` does
for CoCa).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import decoding

if TYPE_CHECKING:
    from vlm_jax.models.lm import LM


def lm_step_fn(model: LM, params, offset: int | jax.Array = 0) -> decoding.StepFn:
    """step(cache, token [B], position) -> (logits [B, V], cache): `token` sits at sequence
    position offset + position and the logits predict the next one."""

    def step(cache, token, position):
        embeddings = model.apply({"params": params}, token[:, None], method=model.embed)
        logits, cache = model.apply({"params": params}, embeddings, cache, offset + position,
                                    method=model.decode)
        return logits[:, 0], cache

    return step


def prefill(model: LM, params, tokens: jax.Array, max_len: int):
    """Run tokens [B, P] (no padding) through the model into a fresh cache of `max_len`
    positions: (logits [B, P, V], cache)."""
    cache = model.apply({"params": params}, tokens.shape[0], max_len, method=model.init_cache)
    embeddings = model.apply({"params": params}, tokens, method=model.embed)
    return model.apply({"params": params}, embeddings, cache, jnp.int32(0), method=model.decode)


def generate_text(model: LM, params, prompt: np.ndarray, settings: decoding.DecodeSettings, *,
                  eos_id: int, pad_id: int, rng: jax.Array | None = None):
    """Continue prompts int [B, P] (right-padded with `pad_id`; every row non-empty):
    (tokens int32 [B, settings.max_len], extras of `decoding.generate`). tokens hold each row's
    continuation, then EOS, then padding; the prompt is not repeated.

    The tokens every row has (the shortest prompt) are prefilled in one pass; the rest of a
    longer prompt is forced token by token through `decoding`'s `prompt`, so rows of unequal
    length share one cache and one loop. Host-side (prompt lengths set the shapes); the
    decoding loop itself is jitted.
    """
    prompt = np.asarray(prompt, np.int32)
    lengths = (prompt != pad_id).sum(axis=1)
    shared = int(lengths.min())
    if shared < 1:
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    forced = prompt[:, shared:]  # [B, P - shared]: the rest of the longer prompts
    total = forced.shape[1] + settings.max_len  # decoding positions
    tokens, extras = _generate(model, params, jnp.asarray(prompt[:, :shared]),
                               jnp.asarray(forced), settings, eos_id, pad_id, rng, total)
    tokens = np.asarray(tokens)
    # Each row's continuation starts after its own prompt.
    rest = lengths - shared
    rows = [tokens[i, rest[i]:rest[i] + settings.max_len] for i in range(len(tokens))]
    return np.stack(rows), jax.tree_util.tree_map(np.asarray, extras)


def _generate_impl(model, params, shared, forced, settings, eos_id, pad_id, rng, total):
    """Decode `total` positions after the prefilled `shared` tokens [B, S]: decoding's position
    0 returns the prefill's last logits (its input, BOS, is ignored); position j > 0 runs the
    token at sequence position S + j - 1."""
    length = shared.shape[1]
    prefill_logits, cache = prefill(model, params, shared, length + total)
    first = prefill_logits[:, -1]  # [B, V]: predicts sequence position S
    later = lm_step_fn(model, params, offset=length - 1)

    def step(cache, token, position):
        # Beam search repeats rows (B * K, row b * K + k): repeat the prefill logits alike.
        start = jnp.repeat(first, token.shape[0] // first.shape[0], axis=0)
        return jax.lax.cond(position == 0, lambda: (start, cache),
                            lambda: later(cache, token, position))

    settings = dataclasses.replace(settings, max_len=total)
    return decoding.generate(step, cache, settings, bos_id=pad_id, eos_id=eos_id,
                             pad_id=pad_id, rng=rng,
                             prompt=forced if forced.shape[1] else None)


_generate = jax.jit(_generate_impl, static_argnums=(0, 4, 5, 6, 8))
# Traceable (call it inside a jit): a model whose prompt is built on device, e.g. early fusion's
# image codes, decodes after it without the host-side prompt handling of generate_text.
generate_after_prefill = _generate_impl
