"""Chameleon-style early-fusion training: next-token loss over interleaved image/text documents.

Batches are the shared "interleaved" format (data/formats.py): BOS (<boi> <image>*T <eoi>
caption)* closing EOS, with the documents' images beside it. Inside the jitted loss:
  1. the frozen VQ tokenizer (config.vq: a configs/vq.py workdir) encodes every image to T
     codes and they overwrite the placeholders (models/early_fusion.fuse_codes), so a sequence
     is tokens of one vocabulary;
  2. with probability loss.caption_first per document (rng of the step), each caption moves
     before its image (early_fusion.caption_first): text -> image and image -> text are both
     learnt (Chameleon puts half of its pairs image-first);
  3. plain causal next-token cross-entropy over every non-padding target, image codes and text
     alike, + loss.z_loss_weight x mean log(Z)^2.
Tokenizing in the loss, not the data pipeline: the VQ runs on the accelerator in the same jit
(no host VQ in the grain workers, no second copy of its params per worker), and the shared
pipeline stays the plain interleaved format, which other families read too.

Metrics: loss, text_loss / image_loss (the cross-entropy over text or code targets),
z_loss (unweighted), token_accuracy, image_token_accuracy. Capabilities: "captioner" (image ->
text through the VQ codes; vlm_jax/early_fusion_generation.py also samples images) and
"image_likelihood" (log p(image codes | BOS text <boi>): zero-shot and probes by Bayes).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from vlm_jax import early_fusion_generation as fusion_generation
from vlm_jax.evals.caption_model import CaptionModel
from vlm_jax.evals.image_likelihood import ImageLikelihood
from vlm_jax.losses import generative
from vlm_jax.models import early_fusion, lm, vq

CAPABILITIES = frozenset({"captioner", "image_likelihood"})


def init_batch(config: ml_collections.ConfigDict) -> dict:
    """One row of tokens: the LM's input."""
    return {"tokens": np.zeros((1, config.data.text_length - 1), np.int32)}


def fused_tokens(image_tokenizer, vocab: early_fusion.ImageVocabulary, batch: dict,
                 flip: jax.Array) -> jax.Array:
    """The batch's documents as one-vocabulary tokens int32 [B, L] (module doc, steps 1-2)."""
    images = batch["images"]  # [B, M, S, S, 3]
    b, m = images.shape[:2]
    codes = vq.tokenize(image_tokenizer.model, image_tokenizer.params,
                        images.reshape(b * m, *images.shape[2:]))
    codes = jax.lax.stop_gradient(codes).reshape(b, m, -1)  # [B, M, T]
    tokens = early_fusion.fuse_codes(batch["text_tokens"], codes, batch["image_positions"],
                                     batch["image_valid"], vocab.code_offset)
    return early_fusion.caption_first(tokens, batch["segment_ids"], flip, vocab.eos_id)


def sequence_loss(model: lm.LM, params, tokens: jax.Array, vocab: early_fusion.ImageVocabulary,
                  z_loss_weight: float):
    """(loss, metrics) of next-token prediction over tokens [B, L] (module doc, step 3)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    weights = targets != vocab.pad_id
    logits = model.apply({"params": params}, inputs, valid=inputs != vocab.pad_id)
    cross_entropy, metrics = generative.caption_loss(logits, targets, weights)
    z = generative.z_loss(logits, weights)
    is_code = vocab.is_code(targets)
    image_loss, image_metrics = generative.caption_loss(logits, targets, weights & is_code)
    text_loss, _ = generative.caption_loss(logits, targets, weights & ~is_code)
    loss = cross_entropy + z_loss_weight * z
    return loss, {"loss": loss, "cross_entropy": cross_entropy, "text_loss": text_loss,
                  "image_loss": image_loss, "z_loss": z,
                  "token_accuracy": metrics["token_accuracy"],
                  "image_token_accuracy": image_metrics["token_accuracy"]}


def make_loss_fn(model: lm.LM, config: ml_collections.ConfigDict, mesh=None,
                 image_tokenizer=None):
    """loss_fn(params, batch, rng) -> (loss, metrics). `image_tokenizer` (an
    `vq_tokenizer.ImageTokenizer`) defaults to the run in config.vq."""
    del mesh  # a plain mean over the batch's tokens
    image_tokenizer = image_tokenizer or fusion_generation.load_image_tokenizer(config)
    vocab = fusion_generation.vocabulary(config, image_tokenizer)
    fusion_generation.check_image_tokens(config, image_tokenizer)
    caption_first = config.loss.caption_first
    z_loss_weight = config.loss.z_loss_weight

    def loss_fn(params, batch, rng):
        flip = jax.random.bernoulli(rng, caption_first, (batch["text_tokens"].shape[0],))
        tokens = fused_tokens(image_tokenizer, vocab, batch, flip)
        return sequence_loss(model, params, tokens, vocab, z_loss_weight)

    return loss_fn


def make_captioner(model: lm.LM, params, tokenizer, mesh,
                   config: ml_collections.ConfigDict) -> CaptionModel:
    """Captions, prompted answers and caption likelihoods from BOS <boi> codes <eoi>."""
    return fusion_generation.make_captioner(
        model, params, tokenizer, mesh, config, fusion_generation.load_image_tokenizer(config))



def make_image_likelihood(model: lm.LM, params, tokenizer, mesh,
                          config: ml_collections.ConfigDict) -> ImageLikelihood:
    """log p(image codes | BOS text <boi>) of (image, text) rows, for the image-likelihood
    evals."""
    return fusion_generation.make_image_likelihood(
        model, params, tokenizer, mesh, config, fusion_generation.load_image_tokenizer(config))
