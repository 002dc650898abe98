"""CoCa training: contrastive loss on the pooled embeddings + captioning cross-entropy.

loss = loss.contrastive_weight x contrastive (the CLIP/SigLIP loss functions, so it shards like
them) + loss.caption_weight x token cross-entropy of the teacher-forced caption, padding ignored
(open_clip's CoCaLoss: weights 1 and 2). The contrastive `Scorer` runs the embedding evals;
`make_captioner` gives the generative evals captions and caption likelihoods.
"""

from __future__ import annotations

import ml_collections

from vlm_jax import generation, serving
from vlm_jax.evals.caption_model import CaptionModel
from vlm_jax.evals.scoring import Scorer
from vlm_jax.losses import generative, terms
from vlm_jax.models import coca
from vlm_jax.trainers import image_text_init_batch

CAPABILITIES = frozenset({"scorer", "captioner"})


def init_batch(config: ml_collections.ConfigDict) -> dict:
    """One image and one caption's tokens: the towers' and the decoder's inputs."""
    return image_text_init_batch(config)


def make_loss_fn(model: coca.CoCa, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics): the weighted sum of both terms."""
    contrastive_loss_term = terms.contrastive_term(config.loss.contrastive, config.loss, mesh)
    contrastive_weight, caption_weight = config.loss.contrastive_weight, config.loss.caption_weight

    def loss_fn(params, batch, rng):
        del rng  # no dropout
        text_tokens = batch["text_tokens"]
        image_emb, text_emb, extras = model.apply({"params": params}, batch["image"], text_tokens)
        contrastive_loss, metrics = contrastive_loss_term(image_emb, text_emb, extras)
        caption_loss, caption_metrics = generative.caption_loss(
            extras["caption_logits"], text_tokens, text_tokens != model.pad_id)
        loss = contrastive_weight * contrastive_loss + caption_weight * caption_loss
        return loss, {**metrics, **caption_metrics, "loss": loss,
                      "contrastive_loss": contrastive_loss, "logit_scale": extras["logit_scale"]}

    return loss_fn


def make_scorer(model: coca.CoCa, params, tokenizer, mesh,
                config: ml_collections.ConfigDict) -> Scorer:
    """The contrastive towers' embeddings; similarity is the cosine."""
    return serving.make_scorer(model, params, tokenizer, mesh, config.data.text_length)


def make_captioner(model: coca.CoCa, params, tokenizer, mesh,
                   config: ml_collections.ConfigDict) -> CaptionModel:
    """Captions (decoded per `config.decode`) and caption likelihoods of the trained model."""
    if (tokenizer.bos_id, tokenizer.pad_id) != (model.bos_id, model.pad_id):
        raise ValueError(
            f"tokenizer {tokenizer.path} has bos_id={tokenizer.bos_id}, pad_id={tokenizer.pad_id} "
            f"but the model was built with bos_id={model.bos_id}, pad_id={model.pad_id}; set "
            "config.model.bos_id / pad_id to the tokenizer's")

    def generate_tokens(p, images, settings, rng, prompt):
        tokens, _ = generation.generate(model, p, images, settings, eos_id=tokenizer.eos_id,
                                        rng=rng, prompt=prompt)
        return tokens

    return serving.make_captioner(
        generate_tokens,
        lambda p, images, tokens: generation.caption_log_likelihood(model, p, images, tokens),
        params, tokenizer, mesh, serving.decode_settings(config), config.data.text_length)
