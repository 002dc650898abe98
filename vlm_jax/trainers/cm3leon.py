"""CM3leon (Yu et al., 2023): early fusion (trainers/early_fusion.py's pieces) trained in two
stages, selected by `loss.stage` (configs/cm3leon.py):

  stage 1, retrieval-augmented CM3 pretraining. Batches are the "interleaved" format from the
     "retrieval" source (data/cm3leon_sources.py): BOS, the k retrieved (image, caption)
     documents, then the example's own, EOS. In the jitted loss: the VQ codes and the
     caption-first reordering (early_fusion.fused_tokens, rate loss.caption_first), then the
     CM3 transform (losses/cm3.py: with probability loss.infill_probability one span, an image
     block or a text run, moves to the end after <infill>, a <mask> left in its place; rows
     grow by 2 tokens), then next-token cross-entropy over every non-padding target + the
     z-loss (early_fusion.sequence_loss). Retrieved documents are in the loss like the rest.
  stage 2, supervised fine-tuning on instructions (the "instructions" source): one image per
     row, as prompt -> answer with the loss on the answer tokens only:
        captioning     BOS <boi> codes <eoi> | caption EOS
        VQA            BOS <boi> codes <eoi> question | answer EOS  (rows with a closing span)
        text -> image  BOS caption <boi> | codes <eoi> EOS  (a share loss.text_to_image of the
                       non-VQA rows, made caption-first in the loss)
     which is the layout the captioner prompts (BOS <boi> codes <eoi>), the VQA eval scores
     (log p("question answer" | image)) and the text -> image sampler prompts (BOS caption
     <boi>). No retrieval and no infilling in stage 2.

Metrics: stage 1 as early_fusion's + infilled (the share of rows with a moved span); stage 2
loss, cross_entropy, z_loss, token_accuracy, and the cross-entropy of each task
(caption_loss, vqa_loss, text_to_image_loss). Capabilities are early_fusion's: "captioner"
(captioning, VQA, POPE) and "image_likelihood"; `python -m vlm_jax.early_fusion_generation
--workdir=RUN` samples images from a CM3leon run as from a Chameleon one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax import early_fusion_generation as fusion_generation
from vlm_jax.losses import cm3, generative
from vlm_jax.models import early_fusion, lm
from vlm_jax.trainers import early_fusion as fusion_trainer

CAPABILITIES = fusion_trainer.CAPABILITIES
init_batch = fusion_trainer.init_batch
make_captioner = fusion_trainer.make_captioner
make_image_likelihood = fusion_trainer.make_image_likelihood

ANSWER_SPAN = 3  # the interleaved format's closing span of a one-image row: a VQA answer


def is_vqa_row(segment_ids: jax.Array) -> jax.Array:
    """bool [B]: rows with a closing span after their one (image, text) pair (VQA rows)."""
    return jnp.max(segment_ids, axis=1) == ANSWER_SPAN


def answer_mask(tokens: jax.Array, segment_ids: jax.Array, vqa: jax.Array,
                vocab: early_fusion.ImageVocabulary) -> jax.Array:
    """bool [B, L]: the answer tokens of stage-2 rows (module doc) in the fused tokens [B, L].

    VQA rows (vqa [B], never reordered) answer with their closing span (segment_ids ==
    ANSWER_SPAN, its EOS included); the others with their second span (cm3.span_ids: the
    caption after the image, or the image block after the caption, <boi> excluded: the prompt
    ends in it) and the EOS."""
    eos = tokens == vocab.eos_id
    second = (cm3.span_ids(tokens, vocab) == 2) & (tokens != vocab.boi_id)
    return jnp.where(vqa[:, None], segment_ids == ANSWER_SPAN, second | eos)


def instruction_loss(model: lm.LM, params, tokens: jax.Array, answers: jax.Array,
                     vqa: jax.Array, flip: jax.Array, vocab: early_fusion.ImageVocabulary,
                     z_loss_weight: float):
    """(loss, metrics): cross-entropy of the answer targets (answers [B, L] from answer_mask)
    + z_loss_weight x their mean log² Z."""
    inputs, targets, weights = tokens[:, :-1], tokens[:, 1:], answers[:, 1:]
    logits = model.apply({"params": params}, inputs, valid=inputs != vocab.pad_id)
    cross_entropy, metrics = generative.caption_loss(logits, targets, weights)
    z = generative.z_loss(logits, weights)
    loss = cross_entropy + z_loss_weight * z
    tasks = {"caption_loss": ~vqa & ~flip, "vqa_loss": vqa, "text_to_image_loss": flip}
    per_task = {name: generative.caption_loss(logits, targets, weights & rows[:, None])[0]
                for name, rows in tasks.items()}
    return loss, {"loss": loss, "cross_entropy": cross_entropy, "z_loss": z,
                  "token_accuracy": metrics["token_accuracy"], **per_task}


def make_loss_fn(model: lm.LM, config: ml_collections.ConfigDict, mesh=None,
                 image_tokenizer=None):
    """loss_fn(params, batch, rng) -> (loss, metrics) of loss.stage (module doc).
    `image_tokenizer` defaults to the VQ run in config.vq."""
    del mesh  # a plain mean over the batch's tokens
    image_tokenizer = image_tokenizer or fusion_generation.load_image_tokenizer(config)
    vocab = fusion_generation.vocabulary(config, image_tokenizer)
    fusion_generation.check_image_tokens(config, image_tokenizer)
    if vocab.mask_id < 0 or vocab.infill_id < 0:
        raise ValueError("CM3leon needs <mask> and <infill> in the tokenizer: set "
                         "data.special_tokens=('<mask>', '<infill>') (configs/cm3leon.py does)")
    settings = config.loss
    if settings.stage not in (1, 2):
        raise ValueError(f"loss.stage={settings.stage}: use 1 (CM3 pretraining) or 2 "
                         "(instruction tuning)")

    def pretraining_loss(params, batch, rng):
        flip_rng, span_rng = jax.random.split(rng)
        rows = batch["text_tokens"].shape[0]
        flip = jax.random.bernoulli(flip_rng, settings.caption_first, (rows,))
        tokens = fusion_trainer.fused_tokens(image_tokenizer, vocab, batch, flip)  # [B, L]
        chosen = cm3.draw_spans(span_rng, cm3.span_ids(tokens, vocab),
                                settings.infill_probability)
        tokens = cm3.infill(tokens, chosen, vocab)  # [B, L + 2]
        loss, metrics = fusion_trainer.sequence_loss(model, params, tokens, vocab,
                                                     settings.z_loss_weight)
        return loss, {**metrics, "infilled": jnp.mean(chosen > 0)}

    def tuning_loss(params, batch, rng):
        vqa = is_vqa_row(batch["segment_ids"])
        flip = jax.random.bernoulli(rng, settings.text_to_image, vqa.shape) & ~vqa
        tokens = fusion_trainer.fused_tokens(image_tokenizer, vocab, batch, flip)
        answers = answer_mask(tokens, batch["segment_ids"], vqa, vocab)
        return instruction_loss(model, params, tokens, answers, vqa, flip, vocab,
                                settings.z_loss_weight)

    return pretraining_loss if settings.stage == 1 else tuning_loss
