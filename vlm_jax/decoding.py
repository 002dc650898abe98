"""Autoregressive decoding for every generative model: greedy, sampling (temperature, top-k,
top-p) and beam search (length penalty); batched, inside `jit`, one compilation for all steps.

A model supplies a step function with its parameters bound:

    step_fn(cache, token [B], position []) -> (logits [B, V], cache)

`token` is the input at `position` (BOS at 0, then the previous output) and the logits predict
the output at `position`. The cache is any pytree whose leaves all lead with the batch axis
(e.g. per-layer KV caches [B, max_len, heads, head_dim], preallocated), so beam search can
repeat and reorder it. The loops are `lax.while_loop`s over a fixed `max_len` that stop early
once every row has emitted EOS.

Outputs are int32 [B, max_len] in the tokenizer's layout: tokens, EOS, then `pad_id` (a row
that never emits EOS is cut at max_len). `pad_id` is never generated, so that layout holds;
reported log-probs are still the model's own, over its whole vocabulary. A `prompt` [B, P]
(right-padded with `pad_id`, no EOS) forces the first tokens of each row; they appear in the
output and their log-probs are not counted. `Captioner` is the host-side (NumPy) face of a
generative model, which the evals use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
STRATEGIES = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How to decode (hashable: a static jit argument). `strategy` picks which fields apply:
    sample: temperature, top_k (0: off), top_p (1: off); beam: beam_size, length_penalty
    (a finished hypothesis scores log p / length**length_penalty; 0 ranks by log p alone)."""

    strategy: str = "greedy"
    max_len: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    beam_size: int = 4
    length_penalty: float = 1.0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"decode strategy {self.strategy!r} must be one of {STRATEGIES}")
        if self.max_len < 1:
            raise ValueError(f"decode max_len must be >= 1, got {self.max_len}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use strategy='greedy' for argmax), "
                             f"got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got {self.top_k}, {self.top_p}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")


def generate(step_fn: StepFn, cache, settings: DecodeSettings, *, bos_id: int, eos_id: int,
             pad_id: int, rng: jax.Array | None = None, prompt: jax.Array | None = None):
    """Decode with `settings.strategy`; returns (tokens int32 [B, max_len], extras)."""
    ids = dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, prompt=prompt)
    if settings.strategy == "greedy":
        return greedy(step_fn, cache, settings.max_len, **ids)
    if settings.strategy == "sample":
        if rng is None:
            raise ValueError("strategy='sample' needs an rng key")
        return sample(step_fn, cache, settings.max_len, rng, temperature=settings.temperature,
                      top_k=settings.top_k, top_p=settings.top_p, **ids)
    return beam_search(step_fn, cache, settings.max_len, beam_size=settings.beam_size,
                       length_penalty=settings.length_penalty, **ids)


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Logits [..., V] with -inf outside the top_k largest and outside the nucleus: the fewest
    most probable tokens whose probability mass reaches top_p (the most probable always stays)."""
    if top_k > 0:
        kth_largest = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = -jnp.sort(-logits, axis=-1)  # descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        num_kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1
        cutoff = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def greedy(step_fn: StepFn, cache, max_len: int, *, bos_id: int, eos_id: int, pad_id: int,
           prompt: jax.Array | None = None):
    """The most probable token at every step; returns (tokens [B, max_len], {"log_prob": [B]})."""
    choose = lambda logits, position: jnp.argmax(logits, axis=-1)
    return _sampling_loop(step_fn, cache, max_len, choose, bos_id, eos_id, pad_id, prompt)


def sample(step_fn: StepFn, cache, max_len: int, rng: jax.Array, *, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, bos_id: int, eos_id: int, pad_id: int,
           prompt: jax.Array | None = None):
    """Ancestral sampling from softmax(logits / temperature), filtered by top_k / top_p; the
    same `rng` gives the same tokens. Returns (tokens [B, max_len], {"log_prob": [B]}), the
    log-probs being the model's own (unfiltered, temperature 1)."""

    def choose(logits, position):
        filtered = filter_logits(logits / temperature, top_k, top_p)
        return jax.random.categorical(jax.random.fold_in(rng, position), filtered, axis=-1)

    return _sampling_loop(step_fn, cache, max_len, choose, bos_id, eos_id, pad_id, prompt)


def _batch_size(cache) -> int:
    return jax.tree_util.tree_leaves(cache)[0].shape[0]


def _forced_tokens(prompt, batch_size: int, max_len: int, pad_id: int):
    """(forced bool [B, max_len], tokens int32 [B, max_len]): where and what the prompt forces."""
    if prompt is None:
        return jnp.zeros((batch_size, max_len), bool), jnp.zeros((batch_size, max_len), jnp.int32)
    if prompt.shape[1] > max_len:
        raise ValueError(f"prompt length {prompt.shape[1]} exceeds decode max_len {max_len}")
    prompt = jnp.pad(prompt.astype(jnp.int32), ((0, 0), (0, max_len - prompt.shape[1])),
                     constant_values=pad_id)
    prompt_length = jnp.sum(prompt != pad_id, axis=1, keepdims=True)
    return jnp.arange(max_len)[None, :] < prompt_length, prompt


def _sampling_loop(step_fn, cache, max_len, choose, bos_id, eos_id, pad_id, prompt):
    batch_size = _batch_size(cache)
    forced, forced_tokens = _forced_tokens(prompt, batch_size, max_len, pad_id)
    rows = jnp.arange(batch_size)

    def keep_going(state):
        position, _, _, done, _, _ = state
        return (position < max_len) & ~jnp.all(done)

    def step(state):
        position, token, tokens, done, log_prob, cache = state
        logits, cache = step_fn(cache, token, position)
        logits = logits.astype(jnp.float32)
        is_forced = forced[:, position]
        choice = choose(logits.at[:, pad_id].set(-jnp.inf), position)
        token = jnp.where(is_forced, forced_tokens[:, position], choice)
        token_log_prob = jax.nn.log_softmax(logits, axis=-1)[rows, token]
        log_prob = log_prob + jnp.where(done | is_forced, 0.0, token_log_prob)
        token = jnp.where(done, pad_id, token).astype(jnp.int32)
        tokens = tokens.at[:, position].set(token)
        return position + 1, token, tokens, done | (token == eos_id), log_prob, cache

    state = (jnp.int32(0), jnp.full((batch_size,), bos_id, jnp.int32),
             jnp.full((batch_size, max_len), pad_id, jnp.int32), jnp.zeros((batch_size,), bool),
             jnp.zeros((batch_size,), jnp.float32), cache)
    _, _, tokens, _, log_prob, _ = jax.lax.while_loop(keep_going, step, state)
    return tokens, {"log_prob": log_prob}


def beam_search(step_fn: StepFn, cache, max_len: int, *, beam_size: int,
                length_penalty: float = 1.0, bos_id: int, eos_id: int, pad_id: int,
                prompt: jax.Array | None = None):
    """Beam search keeping `beam_size` live hypotheses per row.

    Each step takes the 2K best extensions; those ending in EOS *and ranked within the top K*
    become finished hypotheses scored log p / length**length_penalty (length counts EOS), the
    best K others stay live. The rank rule (as in HF's BeamSearchScorer) makes beam_size 1
    identical to greedy. A row stops when its worst finished score beats any score its live
    hypotheses could still reach; at the end live hypotheses compete too. Returns
    (tokens [B, max_len] of the best hypothesis, {"log_prob": [B], "score": [B]}).
    """
    batch_size, beams = _batch_size(cache), beam_size
    forced, forced_tokens = _forced_tokens(prompt, batch_size, max_len, pad_id)
    cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, beams, axis=0), cache)  # [B * K, ...]
    penalty = lambda length: jnp.asarray(length, jnp.float32) ** length_penalty
    take = lambda x, index: jnp.take_along_axis(
        x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)

    def live_bound(live_log_prob, position):
        # log p only falls as a hypothesis grows, so its best reachable score divides its
        # current log p by the largest penalty of any length it can still finish at.
        best = jnp.max(live_log_prob, axis=1)
        return best / jnp.maximum(penalty(position + 1), penalty(max_len))

    def keep_going(state):
        position, _, live_log_prob, _, _, finished_score, _, _ = state
        row_done = jnp.min(finished_score, axis=1) >= live_bound(live_log_prob, position)
        return (position < max_len) & ~jnp.all(row_done)

    def step(state):
        (position, live_tokens, live_log_prob, live_input, cache,
         finished_score, finished_tokens, finished_log_prob) = state
        logits, cache = step_fn(cache, live_input.reshape(-1), position)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        vocab_size = log_probs.shape[-1]
        log_probs = log_probs.reshape(batch_size, beams, vocab_size).at[..., pad_id].set(-jnp.inf)
        # A forced token costs nothing and every other token is impossible.
        forced_row = jnp.where(jnp.arange(vocab_size) == forced_tokens[:, position, None],
                               0.0, -jnp.inf)  # [B, V]
        log_probs = jnp.where(forced[:, position, None, None], forced_row[:, None], log_probs)

        candidates = (live_log_prob[..., None] + log_probs).reshape(batch_size, -1)
        candidate_log_prob, flat_index = jax.lax.top_k(candidates, 2 * beams)  # [B, 2K]
        parent, token = flat_index // vocab_size, (flat_index % vocab_size).astype(jnp.int32)
        candidate_tokens = take(live_tokens, parent).at[:, :, position].set(token)  # [B, 2K, T]
        ends = token == eos_id

        live_log_prob, pick = jax.lax.top_k(jnp.where(ends, -jnp.inf, candidate_log_prob), beams)
        live_tokens, live_input = take(candidate_tokens, pick), take(token, pick)
        rows = jnp.arange(batch_size)[:, None] * beams
        cache = jax.tree_util.tree_map(
            lambda x: x[(rows + take(parent, pick)).reshape(-1)], cache)

        finishing = ends & (jnp.arange(2 * beams) < beams)
        new_score = jnp.where(finishing, candidate_log_prob / penalty(position + 1), -jnp.inf)
        finished = _top_hypotheses(
            beams, (finished_score, new_score), (finished_tokens, candidate_tokens),
            (finished_log_prob, candidate_log_prob))
        return (position + 1, live_tokens, live_log_prob, live_input, cache, *finished)

    def fill(value, dtype, *shape):
        return jnp.full((batch_size, beams, *shape), value, dtype)

    first_live = jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf)  # one live beam at the start
    state = (jnp.int32(0), fill(pad_id, jnp.int32, max_len), fill(0.0, jnp.float32) + first_live,
             fill(bos_id, jnp.int32), cache, fill(-jnp.inf, jnp.float32),
             fill(pad_id, jnp.int32, max_len), fill(-jnp.inf, jnp.float32))
    (position, live_tokens, live_log_prob, _, _,
     finished_score, finished_tokens, finished_log_prob) = jax.lax.while_loop(
        keep_going, step, state)
    score, tokens, log_prob = _top_hypotheses(
        1, (finished_score, live_log_prob / penalty(position)),
        (finished_tokens, live_tokens), (finished_log_prob, live_log_prob))
    return tokens[:, 0], {"log_prob": log_prob[:, 0], "score": score[:, 0]}


def _top_hypotheses(k: int, scores, tokens, log_probs):
    """The k best of several hypothesis pools [B, n_i, ...], by score: (score, tokens, log_prob)."""
    scores = jnp.concatenate(scores, axis=1)
    best, index = jax.lax.top_k(scores, k)
    tokens = jnp.take_along_axis(jnp.concatenate(tokens, axis=1), index[..., None], axis=1)
    log_probs = jnp.take_along_axis(jnp.concatenate(log_probs, axis=1), index, axis=1)
    return best, tokens, log_probs


@dataclasses.dataclass(frozen=True)
class Captioner:
    """A generative image-to-text model seen from the host (NumPy in and out), as a trainer's
    `make_captioner` builds it; what captioning, VQA and likelihood evals consume.

    generate(images uint8 [N, S, S, 3], settings=None, prompts=None, seed=0) -> int32
        [N, max_len]: the generated tokens (after the prompt, one text per image, when given),
        then EOS, then padding; settings None means the model config's default;
    log_likelihood(images, text_tokens [N, L]) -> float [N]: log p(text | image), the sum of
        token log-probs over the non-padding tokens (EOS included);
    tokenize(texts) -> [N, L] tokens + EOS (the layout log_likelihood scores);
    detokenize(tokens) -> texts (stops at EOS).
    """

    generate: Callable[..., np.ndarray]
    log_likelihood: Callable[[np.ndarray, np.ndarray], np.ndarray]
    tokenize: Callable[[Sequence[str]], np.ndarray]
    detokenize: Callable[[np.ndarray], list[str]]

    def caption(self, images: np.ndarray, settings: DecodeSettings | None = None,
                prompts: Sequence[str] | None = None, seed: int = 0) -> list[str]:
        """Generated texts for `images` (without the prompts)."""
        return self.detokenize(self.generate(images, settings, prompts, seed))
