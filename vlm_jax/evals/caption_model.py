"""The CaptionModel every generative eval consumes, and how to call it in fixed-size chunks.

A CaptionModel is a generative image-to-text model seen from outside, at the level of texts:
  generate(images uint8 [N, S, S, 3], prompts=None) -> N captions (with prompts, N texts
      each continuing its prompt, the prompt left out; the evals call it without);
  log_likelihood(images [N, S, S, 3], texts N) -> float [N]: log p(texts[i] | images[i]), one
      score per row (pairwise, not every image against every text).
and, optionally (None when the model has no prompt format of its own),
  prompted_log_likelihood(images uint8 [N, M, S, S, 3], prompts N, continuations N) -> float
      [N]: log p(continuations[i] | prompts[i]), each prompt a text with M "<image>" markers
      that images[i, 0..M-1] fill in order, laid out as the model was trained (a chat model
      puts the prompt in the user turn and scores the continuation as the answer). VQA and POPE
      use it when present, and the few-shot VQA needs it (interleaved example prompts).
It is the one face of a generative model: a trainer with the "captioner" capability returns
one from `make_captioner` (built with `vlm_jax.serving.make_captioner`), and any family that
can caption or score a caption plugs in by building one.

As with the Scorer helpers, every call sees exactly `batch_size` rows (the last chunk padded
by repeating its last row, the padding cut from the result), so a jitted model compiles once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vlm_jax.evals.scoring import pad_rows


@dataclass(frozen=True)
class CaptionModel:
    """A generative model as the evals see it; see the module docstring."""

    generate: Callable[..., list[str]]
    log_likelihood: Callable[[np.ndarray, Sequence[str]], np.ndarray]
    prompted_log_likelihood: Callable[..., np.ndarray] | None = None


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, S, S, 3], got {images.dtype} {images.shape}.")
    if images.shape[0] == 0:
        raise ValueError("a generative eval needs at least one image.")
    return images


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}; set eval_config.batch_size.")


def generate_captions(model: CaptionModel, images: np.ndarray, batch_size: int) -> list[str]:
    """model.generate over `images`, `batch_size` at a time: one caption per image."""
    images = _check_images(images)
    _check_batch_size(batch_size)
    captions = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size]
        generated = list(model.generate(pad_rows(chunk, batch_size)))
        if len(generated) != batch_size:
            raise ValueError(
                f"generate returned {len(generated)} captions for {batch_size} images; it must "
                "return one caption per image."
            )
        captions.extend(generated[: chunk.shape[0]])
    return captions


def log_likelihoods(
    model: CaptionModel, images: np.ndarray, texts: Sequence[str], batch_size: int
) -> np.ndarray:
    """log p(texts[i] | images[i]) float64 [N], `batch_size` rows at a time."""
    images = _check_images(images)
    texts = list(texts)
    _check_batch_size(batch_size)
    if len(texts) != images.shape[0]:
        raise ValueError(
            f"log_likelihoods scores text i against image i; got {images.shape[0]} images and "
            f"{len(texts)} texts."
        )
    scores = []
    for start in range(0, len(texts), batch_size):
        chunk_images = images[start : start + batch_size]
        chunk_texts = texts[start : start + batch_size]
        num_real = len(chunk_texts)
        chunk_texts += [chunk_texts[-1]] * (batch_size - num_real)
        chunk_scores = np.asarray(
            model.log_likelihood(pad_rows(chunk_images, batch_size), chunk_texts),
            dtype=np.float64,
        )
        if chunk_scores.shape != (batch_size,):
            raise ValueError(
                f"log_likelihood returned shape {chunk_scores.shape} for {batch_size} "
                "image-text pairs; it must return one score per pair."
            )
        scores.append(chunk_scores[:num_real])
    return np.concatenate(scores)


def candidate_log_likelihoods(
    model: CaptionModel,
    images: np.ndarray,
    candidates: Sequence[Sequence[str]],
    batch_size: int,
) -> np.ndarray:
    """Scores [N, K] of K candidate texts per image: candidates[i][k] against images[i]."""
    images = _check_images(images)
    num_candidates = {len(texts) for texts in candidates}
    if len(candidates) != images.shape[0] or len(num_candidates) != 1:
        raise ValueError(
            f"need the same number of candidates for each of the {images.shape[0]} images; got "
            f"{len(candidates)} lists of sizes {sorted(num_candidates)}."
        )
    (k,) = num_candidates
    flat_texts = [text for texts in candidates for text in texts]
    flat_images = np.repeat(images, k, axis=0)
    return log_likelihoods(model, flat_images, flat_texts, batch_size).reshape(-1, k)


def prompted_log_likelihoods(model: CaptionModel, images: np.ndarray, prompts: Sequence[str],
                             continuations: Sequence[str], batch_size: int) -> np.ndarray:
    """log p(continuations[i] | prompts[i] with images[i]) float64 [N], `batch_size` rows at a
    time; images uint8 [N, M, S, S, 3] (M images per prompt, one "<image>" marker each)."""
    if model.prompted_log_likelihood is None:
        raise ValueError("this CaptionModel has no prompted_log_likelihood (its trainer gives "
                         "no prompt format); use a VLM on a pretrained LM (Frozen, LLaVA)")
    images = np.asarray(images)
    if images.ndim != 5 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, M, S, S, 3], got {images.dtype} "
                         f"{images.shape}.")
    prompts, continuations = list(prompts), list(continuations)
    if not len(prompts) == len(continuations) == images.shape[0]:
        raise ValueError(f"need one prompt and one continuation per row of images; got "
                         f"{images.shape[0]} rows, {len(prompts)} prompts and "
                         f"{len(continuations)} continuations.")
    _check_batch_size(batch_size)
    scores = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        num_real = len(prompts[chunk])
        fill = lambda texts, missing=batch_size - num_real: texts + [texts[-1]] * missing
        chunk_scores = np.asarray(model.prompted_log_likelihood(
            pad_rows(images[chunk], batch_size), fill(prompts[chunk]),
            fill(continuations[chunk])), dtype=np.float64)
        if chunk_scores.shape != (batch_size,):
            raise ValueError(f"prompted_log_likelihood returned shape {chunk_scores.shape} "
                             f"for {batch_size} rows; it must return one score per row.")
        scores.append(chunk_scores[:num_real])
    return np.concatenate(scores)
