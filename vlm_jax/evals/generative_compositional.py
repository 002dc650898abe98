"""The compositional probes (relation, attribute binding, count) scored by caption
likelihood instead of embedding similarity: s[p, i, j] = log p(caption j | image i).

Text, image and group scores and acc2 are the Winoground / ARO ones of `compositional`
(strict inequalities, ties never correct), so the two scorings of one model sit side by side
on the same pairs. Likelihood scoring reads the caption word by word with the image in view,
which is where word order ("a red circle left of a blue square" vs its swap) can matter.
A likelihood with no image is not defined for every model, so the blind baseline is the
model's own text prior instead: `debiased_caption` ("gendebiased") estimates log P(t) as a
logmeanexp of log P(t | i) over train images and reports the blind and debiased scores.
"""

from __future__ import annotations

import numpy as np

from vlm_jax.data import world
from vlm_jax.evals.caption_model import CaptionModel, candidate_log_likelihoods
from vlm_jax.evals.compositional import winoground_metrics
from vlm_jax.evals.scoring import Scorer


def run(model: CaptionModel, scorer: Scorer | None, eval_config) -> dict[str, float]:
    """gencompositional/<kind>/{text, image, group, acc2} for every kind in
    `world.PROBE_KINDS`, on `eval_config.probe_size` pairs each."""
    del scorer  # likelihood scoring only; `compositional` reports the contrastive scores
    results = {}
    for kind in world.PROBE_KINDS:
        pairs = world.probe_pairs(kind, eval_config.probe_size, seed=eval_config.seed,
                                  image_size=eval_config.image_size)
        images = np.stack([image for pair in pairs for image in pair.images])  # [2P, S, S, 3]
        candidates = [list(pair.captions) for pair in pairs for _ in pair.images]  # 2P x 2
        scores = candidate_log_likelihoods(model, images, candidates, eval_config.batch_size)
        metrics = winoground_metrics(scores.reshape(len(pairs), 2, 2))  # [p, image, caption]
        for metric, value in metrics.items():
            results[f"gencompositional/{kind}/{metric}"] = value
    return results
