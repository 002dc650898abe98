"""CLIP / SigLIP training: two towers scored with the softmax or sigmoid contrastive loss."""

from __future__ import annotations

import ml_collections

from vlm_jax import parallel
from vlm_jax.evals.scoring import Scorer
from vlm_jax.losses import sharded

LOSSES = ("softmax", "sigmoid")


def make_loss_fn(model, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics) for `config.loss.name`.

    `config.loss.variant` picks how the loss is spread over devices (vlm_jax/losses/sharded.py):
    "gspmd" (default) needs no mesh; "gather" and "ring" run on `mesh`'s batch axes.
    """
    name = config.loss.name
    if name not in LOSSES:
        raise ValueError(f"loss.name {name!r} must be one of {', '.join(LOSSES)}")
    variant = config.loss.get("variant", "gspmd")
    bidirectional = bool(config.loss.get("bidirectional", False))
    if variant not in sharded.VARIANTS:
        raise ValueError(f"loss.variant {variant!r} must be one of {', '.join(sharded.VARIANTS)}")
    if variant != "gspmd" and mesh is None:
        raise ValueError(f"loss.variant {variant!r} runs on the device mesh, but make_loss_fn "
                         "got mesh=None: pass the run's mesh, or use loss.variant=gspmd")

    def loss_fn(params, batch, rng):
        del rng  # no dropout or masking in these models
        image_emb, text_emb, extras = model.apply(
            {"params": params}, batch["image"], batch["text_tokens"]
        )
        if name == "softmax":
            loss, metrics = sharded.sharded_softmax_contrastive_loss(
                image_emb, text_emb, extras["logit_scale"], mesh, variant,
                bidirectional=bidirectional)
        else:
            loss, metrics = sharded.sharded_sigmoid_contrastive_loss(
                image_emb, text_emb, extras["logit_scale"], extras["logit_bias"], mesh, variant,
                bidirectional=bidirectional)
        metrics["logit_scale"] = extras["logit_scale"]
        return loss, metrics

    return loss_fn


def make_scorer(model, params, tokenizer, mesh, config: ml_collections.ConfigDict) -> Scorer:
    """Embeds images and texts with the trained towers; similarity is the cosine (the default)."""
    encode_image = parallel.host_apply(
        lambda p, x: model.apply({"params": p}, x, method=model.encode_image)[0], mesh)
    encode_text = parallel.host_apply(
        lambda p, x: model.apply({"params": p}, x, method=model.encode_text)[0], mesh)
    text_length = config.data.text_length
    return Scorer(
        encode_images=lambda images: encode_image(params, images),
        encode_texts=lambda tokens: encode_text(params, tokens),
        tokenize=lambda texts: tokenizer.encode(list(texts), text_length),
    )
