"""Language-model training: next-token cross-entropy on text-only batches (models.lm.LM).

Batches hold text_tokens [B, L] (formats text_only and qa_text, or a mixture of them: the
world's captions and its question-answer texts). Position t of inputs text_tokens[:, :-1]
predicts text_tokens[:, t + 1]; which targets count is `loss.targets`:
  "all"         every non-padding target (an LM learning the whole text);
  "supervised"  the targets with mask_loss 1 (answers and their EOS), in rows that carry a
                mask_loss; rows without one (captions in a mixture) count every non-padding
                target.
Metrics: loss, token_accuracy (argmax equals the target), perplexity (exp of the loss), over
the counted targets. Capability "text_prior": log P(text), the blind baseline of the
zero-shot set and the probes (eval "blindprior"); `heldout_metrics` measures a trained LM on
another split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm_jax.losses import generative
from vlm_jax.models.lm import LM

CAPABILITIES = frozenset({"text_prior"})
TARGETS = ("all", "supervised")


def init_batch(config: ml_collections.ConfigDict) -> dict:
    """One row of tokens: the LM's input."""
    return {"tokens": np.zeros((1, config.data.text_length - 1), np.int32)}


def target_weights(text_tokens: jax.Array, mask_loss: jax.Array | None, pad_id: int,
                   targets: str) -> jax.Array:
    """float32 [B, L - 1]: 1 where target text_tokens[:, t + 1] counts (module doc)."""
    if targets not in TARGETS:
        raise ValueError(f"loss.targets {targets!r} must be one of {TARGETS}")
    weights = text_tokens[:, 1:] != pad_id
    if targets == "supervised" and mask_loss is not None:
        has_mask = jnp.any(mask_loss != 0, axis=1, keepdims=True)  # [B, 1]
        weights = jnp.where(has_mask, (mask_loss[:, 1:] != 0) & weights, weights)
    return weights.astype(jnp.float32)


def next_token_loss(model: LM, params, batch: dict, pad_id: int, targets: str = "all"):
    """(loss, metrics) of a text batch (module doc)."""
    text_tokens = batch["text_tokens"]
    weights = target_weights(text_tokens, batch.get("mask_loss"), pad_id, targets)
    inputs = text_tokens[:, :-1]
    logits = model.apply({"params": params}, inputs, valid=inputs != pad_id)
    loss, metrics = generative.caption_loss(logits, text_tokens[:, 1:], weights)
    return loss, {"loss": loss, "token_accuracy": metrics["token_accuracy"],
                  "perplexity": jnp.exp(loss), "target_tokens": jnp.sum(weights)}


def make_loss_fn(model: LM, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics)."""
    del mesh  # the loss is a plain mean over the batch's tokens
    pad_id = _pad_id(config)
    targets = config.get("loss", {}).get("targets", "all")
    target_weights(jnp.zeros((1, 2), jnp.int32), None, pad_id, targets)  # checks the name

    def loss_fn(params, batch, rng):
        del rng  # no dropout
        return next_token_loss(model, params, batch, pad_id, targets)

    return loss_fn


def text_log_likelihood(model: LM, params, text_tokens: jax.Array, pad_id: int) -> jax.Array:
    """float32 [B]: sum over the non-padding targets of log p(text_tokens[:, t + 1] | prefix),
    the same tokens and targets `next_token_loss` trains on ("all")."""
    inputs, targets = text_tokens[:, :-1], text_tokens[:, 1:]
    logits = model.apply({"params": params}, inputs, valid=inputs != pad_id)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [B, L - 1]
    return jnp.sum(jnp.where(targets != pad_id, picked, 0.0), axis=-1)


def make_text_prior(model: LM, params, tokenizer, mesh, config: ml_collections.ConfigDict):
    """TextPrior: texts -> log P(text) float [N], tokenized as training tokenizes captions."""
    from vlm_jax.evals.text_prior import TextPrior

    del mesh  # one jitted forward over host-sized chunks
    length, pad_id = config.data.text_length, tokenizer.pad_id
    score = jax.jit(lambda p, tokens: text_log_likelihood(model, p, tokens, pad_id))

    def log_prior(texts):
        return np.asarray(score(params, tokenizer.encode([str(t) for t in texts], length)))

    return TextPrior(log_prior=log_prior)


def _pad_id(config: ml_collections.ConfigDict) -> int:
    from vlm_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(config.data).pad_id


def heldout_metrics(model: LM, params, config: ml_collections.ConfigDict, split: str = "val",
                    num_batches: int = 4) -> dict[str, float]:
    """Token-weighted loss, accuracy and perplexity of `params` on `num_batches` batches of
    `split` (the world's "val"), built like the training batches."""
    from vlm_jax.data import formats, sources
    from vlm_jax.data.pipeline import LoadChunk
    from vlm_jax.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(config.data)
    targets = config.get("loss", {}).get("targets", "all")
    source = sources.make_source(config.data, split)
    load, build = LoadChunk(source, config.data, config.seed), formats.BuildBatch(
        tokenizer, config.data)
    evaluate = jax.jit(lambda p, b: next_token_loss(model, p, b, tokenizer.pad_id, targets)[1])
    size = config.batch_size
    total = {"nll": 0.0, "correct": 0.0, "tokens": 0.0}
    for step in range(num_batches):
        chunk = [(step * size + k, (step * size + k) % len(source)) for k in range(size)]
        batch = build(load(chunk))
        batch = {k: v for k, v in batch.items() if k in ("text_tokens", "mask_loss")}
        metrics = jax.device_get(evaluate(params, batch))
        tokens = float(metrics["target_tokens"])
        total["nll"] += float(metrics["loss"]) * tokens
        total["correct"] += float(metrics["token_accuracy"]) * tokens
        total["tokens"] += tokens
    loss = total["nll"] / max(total["tokens"], 1.0)
    return {"loss": loss, "token_accuracy": total["correct"] / max(total["tokens"], 1.0),
            "perplexity": float(np.exp(loss)), "target_tokens": total["tokens"]}
