"""CLIP / SigLIP training: two towers scored with the softmax or sigmoid contrastive loss."""

from __future__ import annotations

import ml_collections

from vlm_jax import parallel
from vlm_jax.evals.scoring import Scorer
from vlm_jax.losses import sharded

LOSSES = ("softmax", "sigmoid")


def pair_loss_term(name: str, loss_config: ml_collections.ConfigDict, mesh=None):
    """term(image_rows, text_emb, score, score_params) -> (loss, metrics): the `name` loss of
    the pair logits `score(...)`, spread over devices per config (`sharded.sharded_pair_loss`).

    `loss_config.variant` picks how (vlm_jax/losses/sharded.py): "gspmd" (default) needs no
    mesh; "gather" and "ring" run on `mesh`'s batch axes. Shared by every trainer with a
    contrastive term (CLIP, SigLIP, LiT, CoCa, Llip), so all shard the same way.
    """
    if name not in LOSSES:
        raise ValueError(f"contrastive loss {name!r} must be one of {', '.join(LOSSES)}")
    variant = loss_config.get("variant", "gspmd")
    bidirectional = bool(loss_config.get("bidirectional", False))
    if variant not in sharded.VARIANTS:
        raise ValueError(f"loss.variant {variant!r} must be one of {', '.join(sharded.VARIANTS)}")
    if variant != "gspmd" and mesh is None:
        raise ValueError(f"loss.variant {variant!r} runs on the device mesh, but make_loss_fn "
                         "got mesh=None: pass the run's mesh, or use loss.variant=gspmd")

    def term(image_rows, text_emb, score, score_params):
        return sharded.sharded_pair_loss(name, image_rows, text_emb, score, score_params, mesh,
                                         variant, bidirectional=bidirectional)

    return term


def contrastive_term(name: str, loss_config: ml_collections.ConfigDict, mesh=None):
    """term(image_emb, text_emb, extras) -> (loss, metrics): `pair_loss_term` on the dot-product
    logits t x.y (+ b for the sigmoid loss; the softmax is blind to a constant bias)."""
    pair_term = pair_loss_term(name, loss_config, mesh)

    def term(image_emb, text_emb, extras):
        params = {"scale": extras["logit_scale"]}
        if name == "sigmoid":
            params["bias"] = extras["logit_bias"]
        return pair_term(image_emb, text_emb, sharded.dot_score, params)

    return term


def make_loss_fn(model, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics) for `config.loss.name`."""
    term = contrastive_term(config.loss.name, config.loss, mesh)

    def loss_fn(params, batch, rng):
        del rng  # no dropout or masking in these models
        image_emb, text_emb, extras = model.apply(
            {"params": params}, batch["image"], batch["text_tokens"]
        )
        loss, metrics = term(image_emb, text_emb, extras)
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
