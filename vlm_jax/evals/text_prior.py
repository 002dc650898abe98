"""A blind baseline: a text-only model's caption prior log P(t) on the zero-shot set and the
compositional probes (eval "blindprior", capability "text_prior": the LM trainer serves it, so
a `configs/lm.py:tiny` run trained on the world's captions is the blind model).

  TextPrior.log_prior(texts N) -> float [N]: log P(text), the sum of its tokens' next-token
  log-likelihoods (the LM's own training objective, over the same tokens).

What a blind model can and cannot do here:
- zero-shot: it predicts the class with the likeliest prompts for every image, so its top-1 is
  that class's share of the set (chance 1/C when the set is balanced);
- probe pairs (two images, caption i true of image i): with no image it prefers the same
  caption for both images, so its Winoground text, image and group scores are 0 and its acc2
  is at most 0.5 whatever it learnt: the symmetric design is immune to text priors. So the
  probes are also scored one-sided, ARO-style: side 0 of each pair alone, image 0 with its true
  caption against the other one (`acc1`). A text prior solves that only if the world's probes
  make one caption of a pair likelier as a text (chance 0.5).

    blindprior/single_object/{top1, chance}
    blindprior/<kind>/{acc1, acc2, group}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vlm_jax.data import world
from vlm_jax.evals import generative_zeroshot
from vlm_jax.evals.compositional import winoground_metrics
from vlm_jax.evals.scoring import Scorer
from vlm_jax.evals.zeroshot import zeroshot_metrics


@dataclass(frozen=True)
class TextPrior:
    """A text-only model as the evals see it; see the module docstring."""

    log_prior: Callable[[Sequence[str]], np.ndarray]


def text_log_priors(model: TextPrior, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """log P(texts[i]) float64 [N], every call exactly `batch_size` texts (the last chunk padded
    with its last text, the padding cut), so a jitted model compiles once."""
    texts = list(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}; set eval_config.batch_size.")
    scores = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        num_real = len(chunk)
        chunk_scores = np.asarray(model.log_prior(chunk + [chunk[-1]] * (batch_size - num_real)),
                                  np.float64)
        if chunk_scores.shape != (batch_size,):
            raise ValueError(f"log_prior returned shape {chunk_scores.shape} for {batch_size} "
                             "texts; it must return one score per text.")
        scores.append(chunk_scores[:num_real])
    return np.concatenate(scores) if scores else np.zeros(0)


def probe_metrics(caption_prior: np.ndarray) -> dict[str, float]:
    """acc1, acc2 and group of a blind model from log P of each pair's captions [P, 2]."""
    caption_prior = np.asarray(caption_prior, np.float64)
    symmetric = winoground_metrics(np.repeat(caption_prior[:, None, :], 2, axis=1))
    return {"acc1": float(np.mean(caption_prior[:, 0] > caption_prior[:, 1])),
            "acc2": symmetric["acc2"], "group": symmetric["group"]}


def run(model: TextPrior, scorer: Scorer | None, eval_config) -> dict[str, float]:
    """The module docstring's metrics on `genzeroshot_size` single-object images (the classes
    and templates of `generative_zeroshot`) and `probe_size` pairs of each probe kind."""
    del scorer  # blind: no image is ever looked at
    batch_size = eval_config.batch_size
    _, labels, class_names = world.single_object_set(
        generative_zeroshot.WORLD_SPLIT, eval_config.genzeroshot_size, seed=eval_config.seed,
        image_size=eval_config.image_size)
    templates = world.ZEROSHOT_TEMPLATES
    prompts = [template.format(name) for template in templates for name in class_names]
    class_prior = text_log_priors(model, prompts, batch_size).reshape(
        len(templates), len(class_names)).mean(axis=0)  # [C]: mean over templates
    split = generative_zeroshot.SPLIT_NAME
    blind = np.broadcast_to(class_prior[None], (len(labels), len(class_names)))
    results = {f"blindprior/{split}/top1": zeroshot_metrics(blind, labels)["top1"],
               f"blindprior/{split}/chance": 1.0 / len(class_names)}
    for kind in world.PROBE_KINDS:
        pairs = world.probe_pairs(kind, eval_config.probe_size, seed=eval_config.seed,
                                  image_size=eval_config.image_size)
        captions = [caption for pair in pairs for caption in pair.captions]  # 2P
        caption_prior = text_log_priors(model, captions, batch_size).reshape(len(pairs), 2)
        for metric, value in probe_metrics(caption_prior).items():
            results[f"blindprior/{kind}/{metric}"] = value
    return results
