"""Zero-shot classification of single-object images with prompt-template ensembles.

The images, labels and class names come from `config.evals.zeroshot` (`evals.datasets`: the
world's single-object splits by default, or a stored dataset). Each class is described by
every template of its set (the world's `ZEROSHOT_TEMPLATES`, "a {}.", ...). Two
ways to combine the templates, chosen by what the scorer is:

- embedding ensemble (CLIP's recipe), when the scorer uses the default `cosine_similarity`
  and its text embeddings are vectors [M, D]: the class embedding is the mean of the
  L2-normalised template embeddings, normalised again;
- score ensemble otherwise (a custom similarity, or embeddings of another shape such as
  caption-conditioned [M, K, D]): one score matrix per template, averaged. Averaging
  embeddings is only meaningful for a similarity known to be a cosine, so any other
  similarity gets the path that is valid for every similarity.

A prediction counts only when the true class is strictly ahead (`pessimistic_rank`): a tie
at the top is wrong, so a constant scorer gets 0, not chance.
"""

from collections.abc import Sequence

import numpy as np

from vlm_jax.evals import datasets
from vlm_jax.evals.scoring import (
    Scorer,
    cosine_similarity,
    embed_images,
    embed_texts,
    l2_normalize,
    pessimistic_rank,
    score_matrix,
)

# top-5 is reported only when there are more than this many classes (else it is trivially 1).
_TOP5_MIN_CLASSES = 6


def zeroshot_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1 (and top5 when there are more than 5 classes) and chance (1 / classes).

    scores [N, C] (image x class); labels int [N]. Ties with the true class count as wrong.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    num_images, num_classes = scores.shape
    if labels.shape != (num_images,):
        raise ValueError(f"labels must have shape ({num_images},), got {labels.shape}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]."
        )
    matches = np.arange(num_classes)[None, :] == labels[:, None]  # [N, C]
    rank = pessimistic_rank(scores, matches)
    metrics = {"top1": float(np.mean(rank <= 1))}
    if num_classes >= _TOP5_MIN_CLASSES:
        metrics["top5"] = float(np.mean(rank <= 5))
    metrics["chance"] = 1.0 / num_classes
    return metrics


def class_scores(
    scorer: Scorer,
    image_embeddings: np.ndarray,
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int,
) -> np.ndarray:
    """Scores [N, C] of every image against every class, ensembled over `templates`."""
    num_classes = len(class_names)
    prompts = [template.format(name) for template in templates for name in class_names]
    prompt_embeddings = embed_texts(scorer, prompts, batch_size)  # [T * C, ...]
    prompt_embeddings = prompt_embeddings.reshape(
        len(templates), num_classes, *prompt_embeddings.shape[1:]
    )  # [T, C, ...]
    if scorer.similarity is cosine_similarity and prompt_embeddings.ndim == 3:
        class_embeddings = l2_normalize(l2_normalize(prompt_embeddings).mean(axis=0))  # [C, D]
        return score_matrix(scorer.similarity, image_embeddings, class_embeddings, batch_size)
    per_template = [
        score_matrix(scorer.similarity, image_embeddings, template_embeddings, batch_size)
        for template_embeddings in prompt_embeddings
    ]  # T x [N, C]
    return np.mean(per_template, axis=0)


def run(scorer: Scorer, eval_config) -> dict[str, float]:
    """zeroshot/<split>/{top1, top5, chance} on `eval_config.zeroshot_size` images per split
    of the `eval_config.zeroshot` dataset."""
    spec = datasets.spec_of(eval_config, "zeroshot")
    results = {}
    for split_name, labeled in datasets.zeroshot_sets(
            spec, eval_config.zeroshot_size, eval_config.seed, eval_config.image_size).items():
        image_embeddings = embed_images(scorer, labeled.images, eval_config.batch_size)
        scores = class_scores(scorer, image_embeddings, labeled.class_names, labeled.templates,
                              eval_config.batch_size)
        for metric, value in zeroshot_metrics(scores, labeled.labels).items():
            results[f"zeroshot/{split_name}/{metric}"] = value
    return results
