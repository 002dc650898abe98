"""MaskVLM training: loss = itc_weight x ITC + itm_weight x ITM + mim_weight x MIM +
mlm_weight x MLM (config.loss.*_weight, 1 each; a term of weight 0 is skipped).

Per step, inside the jitted step (masks and negatives from the step rng, so a resumed run draws
the same):
  * ITC  the CLIP softmax loss of the clean CLS / EOS embeddings, through
         losses.terms.contrastive_term (so loss.variant shards it);
  * ITM  2-way CE on 3B pairs: the B true pairs, each image with a hard-negative text and each
         text with a hard-negative image, both sampled from the ITC softmax with positives
         (same caption) excluded (losses/hard_negatives.py);
  * MIM  pixel MSE on the masked patches ([-1, 1] units) of the image rebuilt from the masked
         image (mask.image_ratio of the patches, 0.6) and the clean text;
  * MLM  CE on the masked tokens (mask.text_rate of the real tokens, 0.3, BERT 80/10/10) rebuilt
         from the masked text and the clean image.
Serves a Scorer (the ITC embeddings), a Matcher (the ITM logit) and a Reconstructor (the
pixel decoder's rebuilt masked images, with the training masks: the "reconstruction" eval).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax import masking, mim_targets, serving
from vlm_jax.data import tokenizer as tokenizers
from vlm_jax.evals.matching import Matcher
from vlm_jax.evals.reconstruction import Reconstructor
from vlm_jax.evals.scoring import Scorer
from vlm_jax.losses import hard_negatives, terms
from vlm_jax.losses import masking as masking_losses
from vlm_jax.models import maskvlm
from vlm_jax.trainers import image_text_init_batch

CAPABILITIES = frozenset({"scorer", "matcher", "reconstructor"})
TERMS = ("itc", "itm", "mim", "mlm")
MASK_TOKEN = "[MASK]"


def init_batch(config: ml_collections.ConfigDict) -> dict:
    """One image and one caption: every encoder and head is built."""
    return image_text_init_batch(config)


def pretrain_outputs(module: maskvlm.MaskVLM, images, text_tokens, patch_mask, masked_tokens,
                     negatives_rng) -> dict:
    """Everything the four terms read, from one pass over the batch (a `model.apply` method):
    clean encodings (ITC, ITM, and the context of each reconstruction), the masked ones, and
    the ITM logits [3B, 2] of the true and hard-negative pairs with their labels."""
    image_emb, image_extras = module.encode_image(images)
    text_emb, text_extras = module.encode_text(text_tokens)
    image_tokens, text_states = image_extras["tokens"], text_extras["tokens"]
    text_mask = text_extras["text_mask"]
    logit_extras = maskvlm.two_tower.logit_extras(module)
    similarity = logit_extras["logit_scale"] * image_emb @ text_emb.T  # [B, B], the ITC logits
    text_of_image, image_of_text, valid = hard_negatives.sample_hard_negatives(
        negatives_rng, similarity, hard_negatives.same_text(text_tokens))
    pair_images = jnp.concatenate([image_tokens, image_tokens, image_tokens[image_of_text]])
    pair_texts = jnp.concatenate([text_states, text_states[text_of_image], text_states])
    pair_masks = jnp.concatenate([text_mask, text_mask[text_of_image], text_mask])
    batch = images.shape[0]
    _, masked_image = module.encode_image(maskvlm.mask_patches(images, patch_mask, module.patch))
    _, masked_text = module.encode_text(masked_tokens)
    return {
        **logit_extras, "image_emb": image_emb, "text_emb": text_emb,
        "itm_logits": module.itm_logits(pair_images, pair_texts, pair_masks),
        "itm_labels": jnp.concatenate([jnp.ones(batch, jnp.int32), jnp.zeros(2 * batch,
                                                                             jnp.int32)]),
        "itm_weights": jnp.concatenate([jnp.ones(batch, bool), valid[:, 0], valid[:, 1]]),
        "pixels": module.reconstruct_image(masked_image["tokens"], text_states, text_mask),
        # The masked text's own padding mask equals the clean one (padding is never masked).
        "token_logits": module.predict_tokens(masked_text["tokens"], text_mask, image_tokens),
    }


def mask_token_ids(config: ml_collections.ConfigDict) -> tuple[int, list[int]]:
    """([MASK]'s id, ids never drawn as MLM's random replacement: specials, pad, BOS, EOS)."""
    tokenizer = tokenizers.load_tokenizer(config.data)
    if MASK_TOKEN not in tokenizer.special_ids:
        raise ValueError(f"MaskVLM's MLM needs a {MASK_TOKEN} token: add it to "
                         "config.data.special_tokens")
    avoid = sorted({*tokenizer.special_ids.values(), tokenizer.pad_id, tokenizer.eos_id,
                    max(tokenizer.bos_id, 0)})
    return tokenizer.special_ids[MASK_TOKEN], avoid


def make_loss_fn(model: maskvlm.MaskVLM, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics): see the module docstring."""
    loss_config, mask_config = config.loss, config.mask
    weights = terms.term_weights(loss_config, TERMS)
    patch = model.image["patch_size"]
    num_patches = (config.data.image_size // patch) ** 2
    mask_id, avoid = mask_token_ids(config)
    contrastive = terms.contrastive_term(loss_config.contrastive, loss_config, mesh)
    eos_id = tokenizers.load_tokenizer(config.data).eos_id

    def loss_fn(params, batch, rng):
        images, text_tokens = batch["image"], batch["text_tokens"]
        k_patch, k_text, k_negatives = jax.random.split(rng, 3)
        patch_mask = masking.random_patch_mask(k_patch, images.shape[0], num_patches,
                                               mask_config.image_ratio)
        maskable = (text_tokens != model.pad_id) & (text_tokens != eos_id)
        masked_tokens, mlm_mask = masking.mlm_corrupt(
            k_text, text_tokens, maskable, mask_config.text_rate, mask_id, model.vocab_size,
            avoid)
        outputs = model.apply({"params": params}, images, text_tokens, patch_mask,
                              masked_tokens, k_negatives, method=pretrain_outputs)
        targets = mim_targets.patchify(images.astype(jnp.float32) / 127.5 - 1.0, patch)
        return combine(outputs, targets, patch_mask, text_tokens, mlm_mask, weights,
                       contrastive)

    return loss_fn


def combine(outputs: dict, pixel_targets, patch_mask, text_tokens, mlm_mask,
            weights: dict[str, float], contrastive):
    """(total, metrics): the weighted terms of `pretrain_outputs`' outputs."""
    compute = {
        "itc": lambda: contrastive(outputs["image_emb"], outputs["text_emb"], outputs),
        "itm": lambda: masking_losses.matching_loss(outputs["itm_logits"], outputs["itm_labels"],
                                                    outputs["itm_weights"]),
        "mim": lambda: masking_losses.masked_pixel_mse(outputs["pixels"], pixel_targets,
                                                       patch_mask),
        "mlm": lambda: masking_losses.masked_cross_entropy(outputs["token_logits"], text_tokens,
                                                           mlm_mask),
    }
    total, metrics = terms.weighted_sum(compute, weights)
    metrics["logit_scale"] = outputs["logit_scale"]
    return total, metrics


def make_scorer(model: maskvlm.MaskVLM, params, tokenizer, mesh,
                config: ml_collections.ConfigDict) -> Scorer:
    """The ITC embeddings (ViT CLS, text EOS); similarity is the cosine."""
    return serving.make_scorer(model, params, tokenizer, mesh, config.data.text_length)


def make_matcher(model: maskvlm.MaskVLM, params, tokenizer, mesh,
                 config: ml_collections.ConfigDict) -> Matcher:
    """The ITM logit of clean image i with clean text i, through both cross encoders."""
    return serving.make_matcher(
        lambda p, images, tokens: model.apply({"params": p}, images, tokens, method=model.match),
        params, tokenizer, mesh, config.data.text_length)


def masked_reconstruction(module: maskvlm.MaskVLM, images, text_tokens, patch_mask):
    """Patch pixels [B, N, p*p*3] on [-1, 1] of the masked images rebuilt with the clean text,
    as the MIM term computes them (a `model.apply` method)."""
    _, masked_image = module.encode_image(maskvlm.mask_patches(images, patch_mask, module.patch))
    _, text_extras = module.encode_text(text_tokens)
    return module.reconstruct_image(masked_image["tokens"], text_extras["tokens"],
                                    text_extras["text_mask"])


def make_reconstructor(model: maskvlm.MaskVLM, params, tokenizer, mesh,
                       config: ml_collections.ConfigDict) -> Reconstructor:
    """The pixel decoder's reconstructions under the training masks (mask.image_ratio of the
    patches, random), each image with its caption."""
    patch = model.image["patch_size"]
    num_patches = (config.data.image_size // patch) ** 2
    rebuild = serving.host_function(
        lambda p, images, tokens, patch_mask: model.apply(
            {"params": p}, images, tokens, patch_mask, method=masked_reconstruction), mesh)
    return Reconstructor(
        patch=patch,
        draw_masks=lambda rng, batch: masking.random_patch_mask(
            rng, batch, num_patches, config.mask.image_ratio),
        reconstruct=lambda images, captions, patch_mask: rebuild(
            params, images, tokenizer.encode(list(captions), config.data.text_length),
            patch_mask))
