"""Generative zero-shot classification: each class prompt scored by its caption
log-likelihood given the image, beside the same model's contrastive zero-shot score.

score(image, class) = mean over `world.ZEROSHOT_TEMPLATES` of log p(template(class) | image),
and the prediction is the best class: the captioner used as a classifier, p(class | image) ∝
p(prompt | image) under a uniform class prior. The prompts of one template differ only in the
class words (a name that takes more tokens pays for each). Ties count as wrong, as in the
contrastive zero-shot eval (`zeroshot.zeroshot_metrics`), whose top-1 on the very same images
is reported beside it when the model also has contrastive towers (a Scorer).
"""

from __future__ import annotations

import numpy as np

from vlm_jax.data import world
from vlm_jax.evals.caption_model import CaptionModel, candidate_log_likelihoods
from vlm_jax.evals.scoring import Scorer, embed_images
from vlm_jax.evals.zeroshot import class_scores, zeroshot_metrics

SPLIT_NAME, WORLD_SPLIT = "single_object", "val"


def likelihood_class_scores(
    model: CaptionModel,
    images: np.ndarray,
    class_names: tuple[str, ...],
    templates: tuple[str, ...],
    batch_size: int,
) -> np.ndarray:
    """Scores [N, C]: the mean over templates of log p(template(class) | image)."""
    prompts = [template.format(name) for template in templates for name in class_names]
    scores = candidate_log_likelihoods(model, images, [prompts] * len(images), batch_size)
    return scores.reshape(len(images), len(templates), len(class_names)).mean(axis=1)


def run(model: CaptionModel, scorer: Scorer | None, eval_config) -> dict[str, float]:
    """genzeroshot/single_object/{top1, top5, chance} on `eval_config.genzeroshot_size`
    single-object val images, and contrastive_top1 when a `scorer` is given."""
    images, labels, class_names = world.single_object_set(
        WORLD_SPLIT, eval_config.genzeroshot_size, seed=eval_config.seed,
        image_size=eval_config.image_size)
    templates = world.ZEROSHOT_TEMPLATES
    scores = likelihood_class_scores(model, images, class_names, templates,
                                     eval_config.batch_size)
    metrics = zeroshot_metrics(scores, labels)
    if scorer is not None:
        image_embeddings = embed_images(scorer, images, eval_config.batch_size)
        contrastive = class_scores(scorer, image_embeddings, class_names, templates,
                                   eval_config.batch_size)
        metrics["contrastive_top1"] = zeroshot_metrics(contrastive, labels)["top1"]
    return {f"genzeroshot/{SPLIT_NAME}/{metric}": value for metric, value in metrics.items()}
