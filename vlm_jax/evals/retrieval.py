"""Image-text retrieval: recall@1/5/10 image->text and text->image on the world's val and
held-out splits, or on the stored dataset `config.evals.retrieval` names (`evals.datasets`).

The match of image i is caption i, and also any other caption with exactly the same text:
two scenes can share a caption string, and no model can tell identical strings apart, so
counting only (i, i) would charge a perfect model for the world's duplicates. Every other
candidate that ties or beats the best match counts as ahead of it (`pessimistic_rank`).
"""

from collections.abc import Sequence

import numpy as np

from vlm_jax.evals import datasets
from vlm_jax.evals.scoring import (
    Scorer,
    embed_images,
    embed_texts,
    pessimistic_rank,
    score_matrix,
)

SPLITS = ("val", "heldout")
RECALL_AT = (1, 5, 10)


def caption_matches(captions: Sequence[str]) -> np.ndarray:
    """bool [N, N]: True where caption i and caption j are the same string (diagonal True)."""
    captions = np.asarray(list(captions), dtype=object)
    return captions[:, None] == captions[None, :]


def retrieval_metrics(
    scores: np.ndarray, matches: np.ndarray | None = None, recall_at: Sequence[int] = RECALL_AT
) -> dict[str, float]:
    """i2t_r{k} and t2i_r{k} for k in `recall_at`, and chance_r1.

    scores [N, N]: scores[i, j] = similarity(image i, text j); matches bool [N, N] (default:
    the diagonal) marks which texts are correct for which image. chance_r1 is the R@1 of a
    scorer with random continuous scores, the mean fraction of correct candidates (1 / N
    without duplicates).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"retrieval needs square scores [N, N], got shape {scores.shape}.")
    if matches is None:
        matches = np.eye(scores.shape[0], dtype=bool)
    matches = np.asarray(matches, dtype=bool)
    image_to_text_rank = pessimistic_rank(scores, matches)
    text_to_image_rank = pessimistic_rank(scores.T, matches.T)
    metrics = {}
    for k in recall_at:
        metrics[f"i2t_r{k}"] = float(np.mean(image_to_text_rank <= k))
    for k in recall_at:
        metrics[f"t2i_r{k}"] = float(np.mean(text_to_image_rank <= k))
    metrics["chance_r1"] = float(matches.mean())
    return metrics


def run(scorer: Scorer, eval_config) -> dict[str, float]:
    """retrieval/<split>/{i2t_r1, ..., t2i_r10, chance_r1} on the first
    `eval_config.retrieval_size` examples of each split of the `eval_config.retrieval` data."""
    spec = datasets.spec_of(eval_config, "retrieval")
    results = {}
    for split, captioned in datasets.caption_sets(
            spec, SPLITS, eval_config.retrieval_size, eval_config.seed,
            eval_config.image_size).items():
        captions = captioned.captions
        image_embeddings = embed_images(scorer, captioned.images, eval_config.batch_size)
        text_embeddings = embed_texts(scorer, captions, eval_config.batch_size)
        scores = score_matrix(
            scorer.similarity, image_embeddings, text_embeddings, eval_config.batch_size
        )
        for metric, value in retrieval_metrics(scores, caption_matches(captions)).items():
            results[f"retrieval/{split}/{metric}"] = value
    return results
