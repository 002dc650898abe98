"""BLIP-2 stage 1: the Q-Former learns to read a frozen image encoder with three terms.

loss = loss.itc_weight x ITC + loss.itm_weight x ITM + loss.itg_weight x ITG (BLIP-2: 1 each)
  ITC  the softmax contrastive loss on s(i, t) = scale x max_q q_iq . y_t, label-smoothed
       (`loss.label_smoothing`, 0.1), spread over devices by `loss.variant` like CLIP's
       (`terms.pair_loss_term` with the max-over-queries score);
  ITM  2-way matching on the aligned pairs and on one hard negative per image and per text,
       drawn from the ITC logits (`losses.blip2.sample_hard_negatives`, the step's rng);
  ITG  captioning: the text decodes causally from all queries, queries see queries only
       (the multimodal causal mask), label-smoothed token cross-entropy.
The image encoder is frozen by `optim.param_rules` (("image_tower/.*", "freeze")), its weights
from a trained contrastive run through `init_from` (configs/blip2.py).
The scorer serves the ITC embeddings: images as their Q query embeddings, texts as the [CLS]
embedding, a pair's score the max over queries of the cosine; the matcher serves the ITM head
(its matched-vs-not log-odds), which the itm_* evals rerank and score probes with.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from vlm_jax import serving
from vlm_jax.evals.matching import Matcher
from vlm_jax.evals.scoring import Scorer
from vlm_jax.losses import blip2 as blip2_losses
from vlm_jax.losses import generative, terms
from vlm_jax.models import blip2
from vlm_jax.trainers import image_text_init_batch

CAPABILITIES = frozenset({"scorer", "matcher"})
TERMS = ("itc", "itm", "itg")


def init_batch(config: ml_collections.ConfigDict) -> dict:
    """One image and one caption's tokens: every part of the model sees them at init."""
    return image_text_init_batch(config)


def make_loss_fn(model: blip2.Blip2, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics): the weighted sum of the three terms
    (a term of weight 0 is not computed)."""
    weights = {name: float(config.loss[f"{name}_weight"]) for name in TERMS}
    if not any(weights.values()):
        raise ValueError("BLIP-2 stage 1 needs a nonzero loss.itc_weight, itm_weight or "
                         "itg_weight")
    itc_term = terms.pair_loss_term("softmax", config.loss, mesh)
    label_smoothing = float(config.loss.get("label_smoothing", 0.0))
    pad_id = model.qformer_sizes.get("pad_id", 0)

    def loss_fn(params, batch, rng):
        def apply(method, *args):
            return model.apply({"params": params}, *args, method=method)

        tokens = batch["text_tokens"]
        features = apply(model.image_features, batch["image"])  # [B, S, C], frozen encoder
        query_emb, text_emb, extras = apply(model.contrastive, features, tokens)
        score_params = {"scale": extras["logit_scale"]}
        parts, metrics = {}, {"logit_scale": extras["logit_scale"]}
        if weights["itc"]:
            parts["itc"], itc_metrics = itc_term(query_emb, text_emb, blip2.max_query_score,
                                                 score_params)
            metrics["i2t_accuracy"] = itc_metrics["i2t_accuracy"]
        if weights["itm"]:
            itc_logits = blip2.max_query_score(query_emb, text_emb, score_params)  # [B, B]
            negative_text, negative_image = blip2_losses.sample_hard_negatives(rng, itc_logits)
            pair_features, pair_tokens = blip2_losses.matching_batch(
                features, tokens, negative_text, negative_image)
            parts["itm"], itm_metrics = blip2_losses.itm_loss(
                apply(model.match, pair_features, pair_tokens))
            metrics["itm_accuracy"] = itm_metrics["itm_accuracy"]
        if weights["itg"]:
            parts["itg"], itg_metrics = generative.caption_loss(
                apply(model.caption_logits, features, tokens), tokens, tokens != pad_id,
                label_smoothing)
            metrics["token_accuracy"] = itg_metrics["token_accuracy"]
        loss = sum(weights[name] * value for name, value in parts.items())
        metrics.update({f"{name}_loss": value for name, value in parts.items()})
        return loss, {**metrics, "loss": loss}

    return loss_fn


def check_task_tokens(model: blip2.Blip2, tokenizer) -> None:
    """The model's [CLS]/[DEC] ids must be the tokenizer's (configs/blip2.py adds both after
    the world vocabulary); a mismatch names both sides."""
    for name, model_id in (("[CLS]", model.cls_id), ("[DEC]", model.dec_id)):
        token_id = tokenizer.token_id(name)
        if token_id != model_id:
            raise ValueError(f"tokenizer {tokenizer!r} has {name} = {token_id} but the model was "
                             f"built with {model_id}; set config.model.cls_id / dec_id to the "
                             "tokenizer's ids")


def make_scorer(model: blip2.Blip2, params, tokenizer, mesh,
                config: ml_collections.ConfigDict) -> Scorer:
    """Images encode to their query embeddings [N, Q, E], texts to [M, E]; a pair's score is
    the max over queries of the cosine (zero-shot averages templates' score matrices)."""
    check_task_tokens(model, tokenizer)
    similarity = jax.jit(blip2.max_query_similarity)
    return serving.make_scorer(
        model, params, tokenizer, mesh, config.data.text_length,
        similarity=lambda query_emb, text_emb: np.asarray(similarity(query_emb, text_emb)))


def make_matcher(model: blip2.Blip2, params, tokenizer, mesh,
                 config: ml_collections.ConfigDict) -> Matcher:
    """ITM of aligned rows: image i with text i -> the log-odds logit[1] - logit[0] of
    "matched" (a monotone map of the head's matched probability)."""
    check_task_tokens(model, tokenizer)

    def match_logits(p, images, tokens):  # uint8 [N, S, S, 3], int32 [N, L] -> [N]
        features = model.apply({"params": p}, images, method=model.image_features)
        logits = model.apply({"params": p}, features, tokens, method=model.match)
        return logits[:, 1] - logits[:, 0]

    return serving.make_matcher(match_logits, params, tokenizer, mesh, config.data.text_length)
