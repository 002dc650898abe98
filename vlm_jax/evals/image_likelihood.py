"""The ImageLikelihood every image-likelihood eval consumes: a text -> image generative model
seen from outside, at the level of images and texts:

  log_likelihood(images uint8 [N, S, S, 3], texts N) -> float [N]: log p(image i | text i),
      one score per row (an early-fusion LM: the sum of its image-code log-likelihoods after
      "BOS text <boi>", `vlm_jax.early_fusion_generation.make_image_likelihood`).

A trainer with the "image_likelihood" capability returns one from `make_image_likelihood`.
With it an image is classified by Bayes, p(class | image) ∝ p(image | class) p(class), under a
uniform prior: the class whose prompt makes the image's tokens likeliest. The scored object
(the image) is held fixed and only the conditioning text varies, which is the comparison a
likelihood supports (Diffusion Classifier's rule; FAMILIES_NOTES.md §4).

As with CaptionModel, every call sees exactly `batch_size` rows (the last chunk padded by
repeating its last row, the padding cut from the result), so a jitted model compiles once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vlm_jax.evals.scoring import pad_rows


@dataclass(frozen=True)
class ImageLikelihood:
    """A text-conditioned image model as the evals see it; see the module docstring."""

    log_likelihood: Callable[[np.ndarray, Sequence[str]], np.ndarray]


def image_log_likelihoods(model: ImageLikelihood, images: np.ndarray, texts: Sequence[str],
                          batch_size: int) -> np.ndarray:
    """log p(images[i] | texts[i]) float64 [N], `batch_size` rows at a time."""
    images, texts = np.asarray(images), list(texts)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] == 0:
        raise ValueError(f"images must be uint8 [N, S, S, 3] with N >= 1, got {images.dtype} "
                         f"{images.shape}.")
    if len(texts) != images.shape[0]:
        raise ValueError(f"image_log_likelihoods scores image i given text i; got "
                         f"{images.shape[0]} images and {len(texts)} texts.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}; set eval_config.batch_size.")
    scores = []
    for start in range(0, len(texts), batch_size):
        chunk_texts = texts[start : start + batch_size]
        num_real = len(chunk_texts)
        chunk_texts += [chunk_texts[-1]] * (batch_size - num_real)
        chunk_scores = np.asarray(model.log_likelihood(
            pad_rows(images[start : start + batch_size], batch_size), chunk_texts), np.float64)
        if chunk_scores.shape != (batch_size,):
            raise ValueError(f"log_likelihood returned shape {chunk_scores.shape} for "
                             f"{batch_size} image-text pairs; it must return one score per pair.")
        scores.append(chunk_scores[:num_real])
    return np.concatenate(scores)


def candidate_image_log_likelihoods(model: ImageLikelihood, images: np.ndarray,
                                    candidates: Sequence[Sequence[str]],
                                    batch_size: int) -> np.ndarray:
    """Scores [N, K]: log p(images[i] | candidates[i][k]) for K candidate texts per image."""
    sizes = {len(texts) for texts in candidates}
    if len(candidates) != len(images) or len(sizes) != 1:
        raise ValueError(f"need the same number of candidate texts for each of the {len(images)}"
                         f" images; got {len(candidates)} lists of sizes {sorted(sizes)}.")
    (k,) = sizes
    flat = [text for texts in candidates for text in texts]
    return image_log_likelihoods(model, np.repeat(np.asarray(images), k, axis=0), flat,
                                 batch_size).reshape(-1, k)
