"""Loss terms assembled from config: the contrastive term every two-tower family shares, and
the loss function of a model whose forward pass returns (image side, text side, extras).

Trainers build their loss from these; the loss arithmetic itself lives in
`losses/contrastive.py` (single device) and `losses/sharded.py` (spread over the mesh).
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from vlm_jax.losses import sharded

LOSSES = ("softmax", "sigmoid")

# term(image_side, text_emb, extras) -> (loss, metrics)
Term = Callable[..., tuple]


def pair_loss_term(name: str, loss_config: ml_collections.ConfigDict, mesh=None):
    """term(image_rows, text_emb, score, score_params, valid=None) -> (loss, metrics): the
    `name` loss of the pair logits `score(...)`, spread over devices per config
    (`sharded.sharded_pair_loss`); `valid` bool [B] restricts it to those rows (positives and
    negatives alike), e.g. the paired rows of a batch mixing unimodal examples.

    `loss_config.variant` picks how (vlm_jax/losses/sharded.py): "gspmd" (default) needs no
    mesh; "gather" and "ring" run on `mesh`'s batch axes. Shared by every trainer with a
    contrastive term (CLIP, SigLIP, LiT, CoCa, Llip), so all shard the same way. A wrong name
    or variant is reported here, when the loss is built, not at the first traced step.
    """
    if name not in LOSSES:
        raise ValueError(f"contrastive loss {name!r} must be one of {', '.join(LOSSES)}")
    variant = loss_config.get("variant", "gspmd")
    bidirectional = bool(loss_config.get("bidirectional", False))
    label_smoothing = float(loss_config.get("label_smoothing", 0.0))
    if label_smoothing and name != "softmax":
        raise ValueError(f"loss.label_smoothing={label_smoothing} needs the softmax loss, not "
                         f"{name!r}; set it to 0")
    if variant not in sharded.VARIANTS:
        raise ValueError(f"loss.variant {variant!r} must be one of {', '.join(sharded.VARIANTS)}")
    if variant != "gspmd" and mesh is None:
        raise ValueError(f"loss.variant {variant!r} runs on the device mesh, but make_loss_fn "
                         "got mesh=None: pass the run's mesh, or use loss.variant=gspmd")

    def term(image_rows, text_emb, score, score_params, valid=None):
        return sharded.sharded_pair_loss(name, image_rows, text_emb, score, score_params, mesh,
                                         variant, bidirectional=bidirectional,
                                         label_smoothing=label_smoothing, valid=valid)

    return term


def contrastive_term(name: str, loss_config: ml_collections.ConfigDict, mesh=None) -> Term:
    """term(image_emb, text_emb, extras, valid=None) -> (loss, metrics): `pair_loss_term` on the
    dot-product logits t x.y (+ b for the sigmoid loss; the softmax is blind to a constant
    bias), over the `valid` rows only when given."""
    pair_term = pair_loss_term(name, loss_config, mesh)

    def term(image_emb, text_emb, extras, valid=None):
        params = {"scale": extras["logit_scale"]}
        if name == "sigmoid":
            params["bias"] = extras["logit_bias"]
        return pair_term(image_emb, text_emb, sharded.dot_score, params, valid)

    return term


def pair_model_loss_fn(model, term: Term):
    """loss_fn(params, batch, rng) -> (loss, metrics) of a model called on (images, text_tokens)
    that returns (image side, text embeddings, extras with "logit_scale"): `term` of its
    outputs, with the learned scale logged beside it."""

    def loss_fn(params, batch, rng):
        del rng  # no dropout or masking in these models
        image_side, text_emb, extras = model.apply(
            {"params": params}, batch["image"], batch["text_tokens"])
        loss, metrics = term(image_side, text_emb, extras)
        return loss, {**metrics, "logit_scale": extras["logit_scale"]}

    return loss_fn


def term_weights(loss_config: ml_collections.ConfigDict, names: tuple[str, ...]) -> dict:
    """{term: loss.<term>_weight} (default 1; 0 switches a term off) for a multi-term family."""
    return {name: float(loss_config.get(f"{name}_weight", 1.0)) for name in names}


def weighted_sum(compute: dict[str, Callable], weights: dict[str, float]):
    """(sum of weight x term, metrics) over the terms with a nonzero weight, in `weights`'
    order; `compute[name]()` -> (value, term metrics) runs only for those, so a switched-off
    term costs nothing. Metrics: "<name>_loss" and "<name>_<metric>" of each term, "loss"."""
    total, metrics = 0.0, {}
    for name, weight in weights.items():
        if weight:
            value, term_metrics = compute[name]()
            total = total + weight * value
            metrics[f"{name}_loss"] = value
            metrics.update({f"{name}_{k}": v for k, v in term_metrics.items() if k != "loss"})
    metrics["loss"] = total
    return total, metrics
