"""The Matcher the ITM evals consume: a model that reads an image and a text together and says
how likely they match, as `Scorer` (evals/scoring.py) is a model that embeds them apart.

A cross-encoder (MaskVLM's or FLAVA's ITM head, BLIP-2's Q-Former) cannot score N images
against M texts from N + M embeddings: every pair is one forward pass. So the Matcher scores
aligned rows, image i with text i, and the evals choose which pairs to ask about (the top-k
candidates of a Scorer for retrieval, the four pairs of each probe for the compositional
probes). The score is the ITM logit, log p(match) / p(no match): larger means "matches".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vlm_jax.evals.scoring import pad_rows


@dataclass(frozen=True)
class Matcher:
    """A model as the ITM evals see it; see the module docstring."""

    # images uint8 [N, S, S, 3], text tokens int32 [N, L] -> ITM logit float [N] (row i: pair i)
    match: Callable[[np.ndarray, np.ndarray], np.ndarray]
    tokenize: Callable[[Sequence[str]], np.ndarray]  # captions -> int32 [M, L]


def tokenize_texts(matcher: Matcher, texts: Sequence[str]) -> np.ndarray:
    """int32 [M, L] token ids of `texts`, checked to be one row per text."""
    texts = list(texts)
    tokens = np.asarray(matcher.tokenize(texts))
    if tokens.ndim != 2 or tokens.shape[0] != len(texts):
        raise ValueError(f"matcher.tokenize returned shape {tokens.shape} for {len(texts)} "
                         "texts; it must return int token ids [M, L], one row per text.")
    return tokens


def match_pairs(matcher: Matcher, images: np.ndarray, text_tokens: np.ndarray,
                image_index: np.ndarray, text_index: np.ndarray, batch_size: int) -> np.ndarray:
    """ITM logits float64 [P] of the pairs (images[image_index[p]], text_tokens[text_index[p]]).

    The pairs are gathered `batch_size` at a time, so P pairs never hold P images in memory at
    once, and every call sees exactly `batch_size` rows (the last chunk padded with
    `pad_rows`), so a jitted matcher compiles once.
    """
    images, text_tokens = np.asarray(images), np.asarray(text_tokens)
    image_index, text_index = np.asarray(image_index), np.asarray(text_index)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, S, S, 3], got {images.dtype} {images.shape}.")
    if image_index.shape != text_index.shape or image_index.ndim != 1:
        raise ValueError(f"image_index and text_index must be 1-D and of one length, got "
                         f"{image_index.shape} and {text_index.shape}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}; set eval_config.batch_size.")
    if image_index.size == 0:
        raise ValueError("match_pairs got no pairs; an eval needs at least one.")
    logits = []
    for start in range(0, image_index.size, batch_size):
        chunk_images = images[image_index[start:start + batch_size]]
        chunk_tokens = text_tokens[text_index[start:start + batch_size]]
        num_real = chunk_images.shape[0]
        out = np.asarray(matcher.match(pad_rows(chunk_images, batch_size),
                                       pad_rows(chunk_tokens, batch_size)), dtype=np.float64)
        if out.shape != (batch_size,):
            raise ValueError(f"matcher.match returned shape {out.shape} for {batch_size} pairs; "
                             f"it must return one ITM logit per pair, shape ({batch_size},).")
        logits.append(out[:num_real])
    return np.concatenate(logits)


def match_aligned(matcher: Matcher, images: np.ndarray, texts: Sequence[str],
                  batch_size: int) -> np.ndarray:
    """ITM logits float64 [N] of image i with text i."""
    tokens = tokenize_texts(matcher, texts)
    if tokens.shape[0] != np.asarray(images).shape[0]:
        raise ValueError(f"match_aligned needs one text per image, got {len(tokens)} texts for "
                         f"{np.asarray(images).shape[0]} images.")
    index = np.arange(tokens.shape[0])
    return match_pairs(matcher, images, tokens, index, index, batch_size)
