"""Zero-shot classification and compositional probes scored by image likelihood: which text
makes the image's tokens likeliest, s(image, text) = log p(image | text).

Zero-shot (`run_zeroshot`, "imgzeroshot"): the images, class names and templates of
`generative_zeroshot` (the world's single-object val set, `genzeroshot_size` images, seed
`evals.seed`); score(image, class) = mean over `world.ZEROSHOT_TEMPLATES` of
log p(image | template(class)), prediction = argmax, i.e. p(class | image) by Bayes under a
uniform class prior. The image is the same in every class's score, so its own prior
probability cancels; nothing text-side needs debiasing (the text is conditioned on, not
scored). Ties count as wrong (`zeroshot.zeroshot_metrics`): a model whose image tokens ignore
the text ties every class and scores 0, not chance.

Probes (`run_compositional`, "imgcompositional"): the pairs of `generative_compositional`,
s[p, image, caption] = log p(image | caption), into `compositional.winoground_metrics`. Here the
clean comparison is the text score and acc2 (each image picks the caption that makes its
codes likelier: only the conditioning varies). The image score compares two different images
under one caption and so carries their prior likelihoods ("some images are a priori more
likely", Diffusion Classifier's note on Winoground).
"""

from __future__ import annotations

import numpy as np

from vlm_jax.data import world
from vlm_jax.evals import generative_zeroshot
from vlm_jax.evals.compositional import winoground_metrics
from vlm_jax.evals.image_likelihood import ImageLikelihood, candidate_image_log_likelihoods
from vlm_jax.evals.scoring import Scorer
from vlm_jax.evals.zeroshot import zeroshot_metrics


def image_class_scores(model: ImageLikelihood, images: np.ndarray, class_names: tuple[str, ...],
                       templates: tuple[str, ...], batch_size: int) -> np.ndarray:
    """Scores [N, C]: the mean over templates of log p(image | template(class))."""
    prompts = [template.format(name) for template in templates for name in class_names]
    scores = candidate_image_log_likelihoods(model, images, [prompts] * len(images), batch_size)
    return scores.reshape(len(images), len(templates), len(class_names)).mean(axis=1)


def run_zeroshot(model: ImageLikelihood, scorer: Scorer | None,
                 eval_config) -> dict[str, float]:
    """imgzeroshot/single_object/{top1, top5, chance}."""
    del scorer  # `generative_zeroshot` reports the contrastive score on the same images
    images, labels, class_names = world.single_object_set(
        generative_zeroshot.WORLD_SPLIT, eval_config.genzeroshot_size, seed=eval_config.seed,
        image_size=eval_config.image_size)
    scores = image_class_scores(model, images, class_names, world.ZEROSHOT_TEMPLATES,
                                eval_config.batch_size)
    return {f"imgzeroshot/{generative_zeroshot.SPLIT_NAME}/{metric}": value
            for metric, value in zeroshot_metrics(scores, labels).items()}


def run_compositional(model: ImageLikelihood, scorer: Scorer | None,
                      eval_config) -> dict[str, float]:
    """imgcompositional/<kind>/{text, image, group, acc2} for every kind in
    `world.PROBE_KINDS`, on `eval_config.probe_size` pairs each."""
    del scorer
    results = {}
    for kind in world.PROBE_KINDS:
        pairs = world.probe_pairs(kind, eval_config.probe_size, seed=eval_config.seed,
                                  image_size=eval_config.image_size)
        images = np.stack([image for pair in pairs for image in pair.images])  # [2P, S, S, 3]
        candidates = [list(pair.captions) for pair in pairs for _ in pair.images]  # 2P x 2
        scores = candidate_image_log_likelihoods(model, images, candidates,
                                                 eval_config.batch_size)
        for metric, value in winoground_metrics(scores.reshape(len(pairs), 2, 2)).items():
            results[f"imgcompositional/{kind}/{metric}"] = value
    return results
