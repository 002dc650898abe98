"""CLIP-score filtering: keep the pairs whose image-caption cosine is in the top share or
above a threshold (DataComp's CLIP-score filter)."""

from __future__ import annotations

import numpy as np


def pair_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine of each image [n, d] with its own caption [n, d] -> float32 [n]."""
    a = image_embeddings / np.linalg.norm(image_embeddings, axis=-1, keepdims=True)
    b = text_embeddings / np.linalg.norm(text_embeddings, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1).astype(np.float32)


def clip_score_keep(scores: np.ndarray, *, top_fraction: float | None = None,
                    threshold: float | None = None) -> np.ndarray:
    """bool [n]: the round(n * top_fraction) highest scores (ties broken by index), or all
    scores >= threshold. Exactly one of the two must be given."""
    scores = np.asarray(scores)
    if (top_fraction is None) == (threshold is None):
        raise ValueError("clip_score_keep needs exactly one of top_fraction or threshold.")
    if threshold is not None:
        return scores >= threshold
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}.")
    count = int(round(len(scores) * top_fraction))
    keep = np.zeros(len(scores), bool)
    keep[np.argsort(-scores, kind="stable")[:count]] = True
    return keep
