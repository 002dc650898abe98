"""Llip training: caption-conditioned image vectors, scored with the sigmoid or softmax loss.

The loop is the contrastive one; what differs is the score of a pair, which needs the pair
(`models.llip.llip_logits`), so the loss is the contrastive one on pair logits
(`losses.contrastive.LOSSES_ON_LOGITS`), sharded by the same `loss.variant` as SigLIP's.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from vlm_jax import serving
from vlm_jax.evals.scoring import Scorer
from vlm_jax.losses import terms
from vlm_jax.models.llip import llip_logits
from vlm_jax.trainers import image_text_init_batch

CAPABILITIES = frozenset({"scorer"})


def init_batch(config: ml_collections.ConfigDict) -> dict:
    """One image and one caption's tokens: the two towers' inputs."""
    return image_text_init_batch(config)


def make_loss_fn(model, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics) for `config.loss.name`.

    `config.loss.variant` spreads the loss as for CLIP/SigLIP (`terms.pair_loss_term`):
    with "gather" or "ring" each device keeps its images' mixtures and meets the other
    devices' text embeddings; the attention kernels, scale and bias are replicated.
    """
    name = config.loss.name
    if name == "sigmoid" and config.model.get("logit_bias_init") is None:
        raise ValueError("the sigmoid loss needs a learned bias: set model.logit_bias_init "
                         "(SigLIP uses -10)")
    pair_term = terms.pair_loss_term(name, config.loss, mesh)

    def score(mixture, text_emb, p):  # [b, K, E] x [c, E] -> [b, c]
        return llip_logits(mixture, text_emb, p["attention"], model.temperature, p["scale"],
                           p.get("bias", 0.0))

    def term(mixture, text_emb, extras):
        p = {"attention": extras["attention"], "scale": extras["logit_scale"]}
        if "logit_bias" in extras:  # the softmax loss is blind to a constant bias: none learned
            p["bias"] = extras["logit_bias"]
        return pair_term(mixture, text_emb, score, p)

    return terms.pair_model_loss_fn(model, term)


def make_scorer(model, params, tokenizer, mesh, config: ml_collections.ConfigDict) -> Scorer:
    """Images encode to their mixture [N, K, E], texts to [M, E]; a pair's score is
    cos(h_{i|j}, y_j), so zero-shot ensembles templates by averaging score matrices."""
    # Plain jit, not serving.host_function: the similarity meets embeddings already on the
    # host, and the blind baseline scores one mean image that need not split over the shards.
    similarity = jax.jit(
        lambda p, mixture, text_emb: model.apply(
            {"params": p}, mixture, text_emb, method=model.similarity))
    return serving.make_scorer(
        model, params, tokenizer, mesh, config.data.text_length,
        similarity=lambda mixture, text_emb: np.asarray(similarity(params, mixture, text_emb)))
