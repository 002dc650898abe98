"""CLIP / SigLIP training: two towers scored with the softmax or sigmoid contrastive loss."""

from __future__ import annotations

import ml_collections

from vlm_jax import serving
from vlm_jax.evals.scoring import Scorer
from vlm_jax.losses import terms
from vlm_jax.trainers import image_text_init_batch

CAPABILITIES = frozenset({"scorer"})


def init_batch(config: ml_collections.ConfigDict) -> dict:
    """One image and one caption's tokens: the two towers' inputs."""
    return image_text_init_batch(config)


def make_loss_fn(model, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics) for `config.loss.name`."""
    return terms.pair_model_loss_fn(model, terms.contrastive_term(config.loss.name, config.loss,
                                                                  mesh))


def make_scorer(model, params, tokenizer, mesh, config: ml_collections.ConfigDict) -> Scorer:
    """Embeds images and texts with the trained towers; similarity is the cosine (the default)."""
    return serving.make_scorer(model, params, tokenizer, mesh, config.data.text_length)
