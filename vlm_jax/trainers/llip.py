"""Llip training: caption-conditioned image vectors, scored with the sigmoid or softmax loss.

The loop is the contrastive one; what differs is the score of a pair, which needs the pair
(`models.llip.llip_logits`), so the losses here take the [B, B] logits rather than two
embedding matrices. On logits they are the same formulas as `losses.contrastive`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vlm_jax import parallel
from vlm_jax.evals.scoring import Scorer
from vlm_jax.models.llip import llip_logits

LOSSES = ("sigmoid", "softmax")


def sigmoid_loss_on_logits(logits: jax.Array) -> jax.Array:
    """SigLIP on logits [B, B] (matching pairs on the diagonal): -(1/B) sum log sigmoid(z L)."""
    labels = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]


def softmax_loss_on_logits(logits: jax.Array) -> jax.Array:
    """Symmetric InfoNCE on logits [B, B]: 0.5 * [CE(rows) + CE(columns)]."""
    labels = jnp.arange(logits.shape[0])
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    return 0.5 * (i2t + t2i)


def diagonal_accuracy(logits: jax.Array) -> jax.Array:
    """Fraction of images whose own caption has the strictly highest score in their row."""
    others = jnp.where(jnp.eye(logits.shape[0], dtype=bool), -jnp.inf, logits)
    return jnp.mean(jnp.diagonal(logits) > others.max(axis=1))


def make_loss_fn(model, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics) for `config.loss.name`.

    The [B, B] logits are computed on global arrays under jit (XLA picks the collectives);
    `mesh` is unused until a sharded ring calls `llip_logits` per text chunk.
    """
    del mesh
    name = config.loss.name
    if name not in LOSSES:
        raise ValueError(f"loss.name {name!r} must be one of {', '.join(LOSSES)}")
    if name == "sigmoid" and config.model.get("logit_bias_init") is None:
        raise ValueError("the sigmoid loss needs a learned bias: set model.logit_bias_init "
                         "(SigLIP uses -10)")

    def loss_fn(params, batch, rng):
        del rng  # no dropout or masking in Llip
        mixture, text_emb, extras = model.apply(
            {"params": params}, batch["image"], batch["text_tokens"])
        # The softmax loss is invariant to a constant bias, so none is learned for it.
        logits = llip_logits(mixture, text_emb, extras["attention"], model.temperature,
                             extras["logit_scale"], extras.get("logit_bias", 0.0))  # [B, B]
        loss = sigmoid_loss_on_logits(logits) if name == "sigmoid" else softmax_loss_on_logits(
            logits)
        metrics = {"loss": loss, "i2t_accuracy": diagonal_accuracy(logits),
                   "logit_scale": extras["logit_scale"]}
        return loss, metrics

    return loss_fn


def make_scorer(model, params, tokenizer, mesh, config: ml_collections.ConfigDict) -> Scorer:
    """Images encode to their mixture [N, K, E], texts to [M, E]; a pair's score is
    cos(h_{i|j}, y_j), so zero-shot ensembles templates by averaging score matrices."""
    encode_image = parallel.host_apply(
        lambda p, x: model.apply({"params": p}, x, method=model.encode_image)[0], mesh)
    encode_text = parallel.host_apply(
        lambda p, x: model.apply({"params": p}, x, method=model.encode_text)[0], mesh)
    # Plain jit, not host_apply: the evals call it on any number of images (the blind
    # baseline's one mean image), which need not split over the batch shards.
    similarity = jax.jit(
        lambda p, mixture, text_emb: model.apply(
            {"params": p}, mixture, text_emb, method=model.similarity))
    text_length = config.data.text_length
    return Scorer(
        encode_images=lambda images: encode_image(params, images),
        encode_texts=lambda tokens: encode_text(params, tokens),
        tokenize=lambda texts: tokenizer.encode(list(texts), text_length),
        similarity=lambda mixture, text_emb: np.asarray(
            similarity(params, mixture, text_emb)),
    )
