"""Debiased caption likelihood (VisualGPTScore): log P(t | i) - alpha * log P(t), with the text
prior P(t) taken from the captioner itself.

A caption likelihood log P(t | i) mixes two things: how well t fits image i, and how likely t
is as a text at all (its length, its word order, the language prior). The prior is estimated
as a Monte Carlo mean over M reference images (the world's first `evals.prior_images` train
images), averaged in probability space:

    log P(t) = log (1/M) sum_m P(t | i_m) = logmeanexp_m log P(t | i_m),

a blind text prior of the model's own, defined for any captioner. Bayes says log P(i | t) =
log P(t | i) - log P(t) + log P(i), so alpha = 1 scores how much the image raises the text's
probability; alpha = 0 is the plain caption likelihood (`generative_zeroshot`,
`generative_compositional`, whose numbers it reproduces exactly).

Where the prior cancels (the Diffusion Classifier rule: compare likelihoods only across the
conditioning variable): in a probe's image score each caption picks between two images, so
-alpha * log P(t) is the same on both sides and the image score does not move with alpha; the
text score, acc2 and zero-shot top-1 compare texts for one image and do. The blind score ranks
by log P(t) alone (no image): a text prior, the same for every image, so on a probe pair it
prefers one caption for both images (text / image / group 0, acc2 at most 0.5) and in zero-shot
it predicts one class everywhere. alpha -> infinity ranks by -log P(t), the blind ranking
reversed.

`run` reports, for every alpha of `evals.prior_alphas`,
    gendebiased/single_object/{top1, top5}_a<alpha>   and   .../blind_top1
    gendebiased/<kind>/{text, image, group, acc2}_a<alpha>   and   .../blind_{acc2, group}
with the zero-shot set and probe pairs of the two generative evals (same seed and sizes).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from vlm_jax.data import world
from vlm_jax.evals import generative_zeroshot
from vlm_jax.evals.caption_model import CaptionModel, candidate_log_likelihoods
from vlm_jax.evals.compositional import winoground_metrics
from vlm_jax.evals.scoring import Scorer
from vlm_jax.evals.zeroshot import zeroshot_metrics

DEFAULT_ALPHAS = (0.0, 0.5, 1.0)
DEFAULT_PRIOR_IMAGES = 16  # reference images of the Monte Carlo prior (evals.prior_images)


def logmeanexp(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """log mean exp(x) along `axis`, stable for very negative log-likelihoods (float64)."""
    x = np.asarray(x, np.float64)
    peak = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(peak, axis) + np.log(np.mean(np.exp(x - peak), axis=axis))


def reference_images(eval_config) -> np.ndarray:
    """uint8 [M, S, S, 3]: the first `eval_config.prior_images` train images of the world."""
    count = eval_config.get("prior_images", DEFAULT_PRIOR_IMAGES)  # runs recorded before it
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
        raise ValueError(f"eval_config.prior_images must be a positive integer, got {count!r}; "
                         "start from vlm_jax.evals.default_eval_config().")
    train = world.World("train", seed=eval_config.seed, image_size=eval_config.image_size)
    return np.stack([train[index]["image"] for index in range(count)])


def text_log_prior(model: CaptionModel, texts: Sequence[str], images: np.ndarray,
                   batch_size: int) -> np.ndarray:
    """log P(t) float64 [T] of each text: logmeanexp over the reference images [M, S, S, 3] of
    log P(t | image)."""
    unique, where = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)
    unique = [str(text) for text in unique]  # each distinct text scored once
    per_image = candidate_log_likelihoods(model, images, [unique] * len(images), batch_size)
    return logmeanexp(per_image, axis=0)[where.ravel()]  # [M, U] -> [U] -> [T]


def alphas_of(eval_config) -> tuple[float, ...]:
    """`eval_config.prior_alphas` as floats, checked (finite, >= 0, at least one)."""
    alphas = tuple(float(a) for a in eval_config.get("prior_alphas", DEFAULT_ALPHAS))
    if not alphas or any(not np.isfinite(a) or a < 0 for a in alphas):
        raise ValueError(f"eval_config.prior_alphas must be finite weights >= 0, got "
                         f"{alphas!r}; e.g. (0.0, 0.5, 1.0)")
    return alphas


def alpha_name(alpha: float) -> str:
    """The metric suffix of one alpha: a0, a0.5, a1."""
    return f"a{alpha:g}"


def zeroshot_scores(model: CaptionModel, images: np.ndarray, class_names: Sequence[str],
                    templates: Sequence[str], prior: np.ndarray, batch_size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(likelihood [N, C], prior [C]): mean over templates of log P(template(c) | image) and of
    log P(template(c)); `prior` [T * C] holds log P of the prompts in template-major order."""
    likelihood = generative_zeroshot.likelihood_class_scores(model, images, tuple(class_names),
                                                             tuple(templates), batch_size)
    return likelihood, prior.reshape(len(templates), len(class_names)).mean(axis=0)


def run(model: CaptionModel, scorer: Scorer | None, eval_config) -> dict[str, float]:
    """The module docstring's metrics on `genzeroshot_size` single-object images and
    `probe_size` pairs of each probe kind."""
    del scorer  # `generative_zeroshot` reports the contrastive score beside the likelihood
    alphas, batch_size = alphas_of(eval_config), eval_config.batch_size
    references = reference_images(eval_config)
    results = {}

    images, labels, class_names = world.single_object_set(
        generative_zeroshot.WORLD_SPLIT, eval_config.genzeroshot_size, seed=eval_config.seed,
        image_size=eval_config.image_size)
    templates = world.ZEROSHOT_TEMPLATES
    prompts = [template.format(name) for template in templates for name in class_names]
    prior = text_log_prior(model, prompts, references, batch_size)
    likelihood, class_prior = zeroshot_scores(model, images, class_names, templates, prior,
                                              batch_size)
    split = generative_zeroshot.SPLIT_NAME
    for alpha in alphas:
        metrics = zeroshot_metrics(likelihood - alpha * class_prior[None], labels)
        for metric in ("top1", "top5"):
            if metric in metrics:
                results[f"gendebiased/{split}/{metric}_{alpha_name(alpha)}"] = metrics[metric]
    blind = np.broadcast_to(class_prior[None], likelihood.shape)
    results[f"gendebiased/{split}/blind_top1"] = zeroshot_metrics(blind, labels)["top1"]
    results[f"gendebiased/{split}/chance"] = 1.0 / len(class_names)

    for kind in world.PROBE_KINDS:
        pairs = world.probe_pairs(kind, eval_config.probe_size, seed=eval_config.seed,
                                  image_size=eval_config.image_size)
        pair_images = np.stack([image for pair in pairs for image in pair.images])  # [2P, ...]
        candidates = [list(pair.captions) for pair in pairs for _ in pair.images]  # 2P x 2
        scores = candidate_log_likelihoods(model, pair_images, candidates, batch_size)
        scores = scores.reshape(len(pairs), 2, 2)  # [p, image, caption]
        captions = [caption for pair in pairs for caption in pair.captions]  # 2P
        caption_prior = text_log_prior(model, captions, references, batch_size)
        caption_prior = caption_prior.reshape(len(pairs), 1, 2)  # [p, ·, caption]
        for alpha in alphas:
            metrics = winoground_metrics(scores - alpha * caption_prior)
            for metric, value in metrics.items():
                results[f"gendebiased/{kind}/{metric}_{alpha_name(alpha)}"] = value
        blind = winoground_metrics(np.repeat(caption_prior, 2, axis=1))
        results[f"gendebiased/{kind}/blind_acc2"] = blind["acc2"]
        results[f"gendebiased/{kind}/blind_group"] = blind["group"]
    return results
