"""FLAVA training: the weighted sum of its terms, each off at weight 0 (config.loss.*_weight).

Per step, inside the jitted step (masks from the step rng, so a resumed run draws the same):
  * ITM negatives: each row, with probability loss.itm_rate (0.1, the reference's), takes the
    caption of another row (label 0);
  * the masked pass: BEiT block masks on the image patches, BERT 80/10/10 on loss.mlm_rate of
    the (possibly swapped) caption's tokens (never pads);
  * contrastive  CLIP softmax on the unmasked CLS embeddings of the *unswapped* pairs, through
                 losses.terms.contrastive_term (so loss.variant shards it);
  * mim / mlm    masked unimodal states -> codes or pixels (mim.target) / tokens;
  * mmm_image / mmm_text  the multimodal states of the masked pass, on matched rows only;
  * itm          2-way CE on [CLS_M] of the masked pass.
How this differs from HF FlavaForPreTraining is in docs/masking.md.

Unimodal examples: with data.mixture of caption, image_only and text_only (batches carry
format_id), each term trains on the rows that have its inputs (`row_kinds`): MIM on rows with
an image, MLM on rows with a caption, contrastive / MMM / ITM on the paired rows only. An
unpaired row is no contrastive negative, and ITM swaps take captions of other paired rows only.
A batch without format_id (one format) is paired throughout, as before.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm_jax import masking, mim_targets, serving, vq_tokenizer
from vlm_jax.data import formats
from vlm_jax.data import tokenizer as tokenizers
from vlm_jax.data.world import World
from vlm_jax.evals.reconstruction import Reconstructor
from vlm_jax.evals.scoring import Scorer
from vlm_jax.losses import masking as masking_losses
from vlm_jax.losses import terms
from vlm_jax.models import flava
from vlm_jax.trainers import image_text_init_batch

CAPABILITIES = frozenset({"scorer", "matcher", "reconstructor"})  # reconstructor: pixels only
TERMS = ("contrastive", "mim", "mlm", "mmm_image", "mmm_text", "itm")
MASK_TOKEN = "[MASK]"
FORMATS = ("caption", "image_only", "text_only")  # the data formats FLAVA trains on


def init_batch(config: ml_collections.ConfigDict) -> dict:
    """One image and one caption: every tower and head is built."""
    return image_text_init_batch(config)


def swap_captions(rng: jax.Array, text_tokens: jax.Array, rate: float,
                  paired: jax.Array | None = None):
    """(texts [B, L], itm_labels int32 [B]): each row with probability `rate` takes the caption
    of another row (offset 1..B-1, so never its own index) and gets label 0.

    With `paired` bool [B], only paired rows swap, and only to the caption of another paired
    row (drawn uniformly): an unpaired row's text is a text-only caption or padding. A row
    with no other paired row keeps its own caption."""
    batch = text_tokens.shape[0]
    if paired is not None:
        k_swap, k_donor = jax.random.split(rng)
        eligible = paired[None, :] & ~jnp.eye(batch, dtype=bool)  # [row, donor]
        donor = jnp.argmax(jnp.where(eligible, jax.random.uniform(k_donor, (batch, batch)),
                                     -1.0), axis=1)
        swapped = jax.random.bernoulli(k_swap, rate, (batch,)) & paired & eligible.any(1)
        texts = jnp.where(swapped[:, None], text_tokens[donor], text_tokens)
        return texts, (~swapped).astype(jnp.int32)
    k_swap, k_offset = jax.random.split(rng)
    swapped = jax.random.bernoulli(k_swap, rate, (batch,))
    donor = (jnp.arange(batch) + jax.random.randint(k_offset, (batch,), 1, max(batch, 2))) % batch
    texts = jnp.where(swapped[:, None], text_tokens[donor], text_tokens)
    return texts, (~swapped).astype(jnp.int32)


def image_targets(config: ml_collections.ConfigDict, patch: int, mim_dim: int):
    """targets(images) of `mim.target` (vlm_jax/mim_targets.py). "kmeans": the codebook saved
    in the run's workdir (config.workdir, filled by the loop) is read back, else fitted on
    mim.fit_images world train images and saved there. "vq": the codes of the VQ run in
    mim.vq_workdir, checked against the patch grid and model.mim_dim."""
    mim, data = config.mim, config.data
    if mim.target == "kmeans":
        workdir = config.get("workdir", "")
        world = World("train", data.world_seed, data.image_size)
        return mim_targets.make_targets(
            "kmeans", patch, num_codes=mim.num_codes, seed=config.seed,
            kmeans_path=os.path.join(workdir, mim_targets.KMEANS_FILE) if workdir else None,
            fit_images=lambda: np.stack([world[i]["image"] for i in range(mim.fit_images)]))
    if mim.target == "vq":
        if not mim.get("vq_workdir", ""):
            raise ValueError("mim.target='vq' needs mim.vq_workdir, a finished run of "
                             "configs/vq.py: --config.mim.vq_workdir=runs/vq_tiny")
        tokenizer = vq_tokenizer.load_vq(mim.vq_workdir)
        mim_targets.check_vq_fits(tokenizer, data.image_size, patch, mim_dim)
        return mim_targets.make_targets("vq", patch, vq_tokenizer=tokenizer)
    return mim_targets.make_targets(mim.target, patch)


def check_reconstruction(config: ml_collections.ConfigDict) -> None:
    """The "reconstruction" eval needs pixel predictions: refuse it, before training, for a
    code target."""
    if "reconstruction" in config.evals.names and config.mim.target != "pixels":
        raise ValueError(f"eval 'reconstruction' needs FLAVA's MIM head to predict pixels, but "
                         f"mim.target={config.mim.target!r}; set --config.mim.target=pixels "
                         "(and model.mim_dim=patch*patch*3), or drop 'reconstruction' from "
                         "config.evals.names")


def row_kinds(format_id: jax.Array) -> dict[str, jax.Array]:
    """{"image", "text", "paired"}: bool [B] masks of the rows with an image, with a caption,
    and with both, from format_id int32 [B] (indices into data.formats.FORMATS)."""
    index = {name: formats.FORMATS.index(name) for name in FORMATS}
    paired = format_id == index["caption"]
    return {"image": paired | (format_id == index["image_only"]),
            "text": paired | (format_id == index["text_only"]), "paired": paired}


def _check_formats(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    names = tuple(name for name, _ in formats.mixture_of(data_config))
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise ValueError(f"FLAVA trains on data formats {', '.join(FORMATS)}, not "
                         f"{', '.join(unknown)}: set data.format or data.mixture to those")
    return names


def make_loss_fn(model: flava.Flava, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics): see the module docstring."""
    loss_config, mim = config.loss, config.mim
    # One format alone: its rows are all of one kind, and the batch lacks the other input.
    only = _check_formats(config.data)
    only = only[0] if len(only) == 1 else None
    weights = terms.term_weights(loss_config, TERMS)
    patch = model.image["patch_size"]
    grid = config.data.image_size // patch
    num_masked, min_block = masking.beit_mask_sizes(grid, grid, mim.mask_ratio)
    tokenizer = tokenizers.load_tokenizer(config.data)
    if MASK_TOKEN not in tokenizer.special_ids:
        raise ValueError(f"FLAVA's MLM needs a {MASK_TOKEN} token: add it to "
                         "config.data.special_tokens")
    mask_id = tokenizer.special_ids[MASK_TOKEN]
    avoid = sorted({*tokenizer.special_ids.values(), tokenizer.pad_id, tokenizer.eos_id,
                    max(tokenizer.bos_id, 0)})
    check_reconstruction(config)
    targets_of = image_targets(config, patch, model.mim_dim)
    pixel_target = mim.target == "pixels"
    contrastive = terms.contrastive_term("softmax", loss_config, mesh)

    def loss_fn(params, batch, rng):
        images, text_tokens, rows = _inputs(batch, only, config.data, tokenizer.pad_id)
        k_itm, k_image, k_text = jax.random.split(rng, 3)
        mm_texts, itm_labels = swap_captions(k_itm, text_tokens, loss_config.itm_rate,
                                             None if rows is None else rows["paired"])
        maskable = (mm_texts != tokenizer.pad_id) & (mm_texts != tokenizer.eos_id)
        masked_tokens, mlm_mask = masking.mlm_corrupt(
            k_text, mm_texts, maskable, loss_config.mlm_rate, mask_id, model.vocab_size, avoid)
        patch_mask = masking.beit_block_masks(k_image, images.shape[0], grid, grid, num_masked,
                                              min_block)
        outputs = model.apply({"params": params}, images, text_tokens, patch_mask,
                              masked_tokens)
        return combine(outputs, targets_of(images), patch_mask, mm_texts, mlm_mask, itm_labels,
                       weights, contrastive, pixel_target, rows)

    return loss_fn


def _inputs(batch: dict, only: str | None, data_config, pad_id: int):
    """(images [B, S, S, 3], text_tokens [B, L], rows): a single unimodal format's batch
    lacks the other input, which is filled (zeros, padding) and masked out by `rows`."""
    size, length = data_config.image_size, data_config.text_length
    some = next(iter(batch.values()))
    images = batch.get("image")
    if images is None:
        images = jnp.zeros((some.shape[0], size, size, 3), jnp.uint8)
    text_tokens = batch.get("text_tokens")
    if text_tokens is None:
        text_tokens = jnp.full((some.shape[0], length), pad_id, jnp.int32)
    if "format_id" in batch:
        return images, text_tokens, row_kinds(batch["format_id"])
    if only in (None, "caption"):
        return images, text_tokens, None
    fill = jnp.full(images.shape[:1], formats.FORMATS.index(only), jnp.int32)
    return images, text_tokens, row_kinds(fill)


def combine(outputs: dict, image_targets, patch_mask, text_targets, mlm_mask, itm_labels,
            weights: dict[str, float], contrastive, pixel_target: bool,
            rows: dict[str, jax.Array] | None = None):
    """(total, metrics): the weighted terms of `Flava.__call__`'s outputs for these masks and
    labels (MMM on rows with itm_labels 1 only). A term of weight 0 is skipped.

    `rows` (`row_kinds`; None: every row paired) restricts each term to the rows with its
    inputs: MIM to "image", MLM to "text", contrastive, MMM and ITM to "paired"."""
    positive = itm_labels.astype(bool)[:, None]
    paired = None
    if rows is not None:
        paired = rows["paired"]
        patch_mask_image = patch_mask & rows["image"][:, None]
        mlm_mask_text = mlm_mask & rows["text"][:, None]
        positive = positive & paired[:, None]
    else:
        patch_mask_image, mlm_mask_text = patch_mask, mlm_mask

    def image_term(logits, mask):
        if pixel_target:
            return masking_losses.masked_pixel_mse(logits, image_targets, mask)
        return masking_losses.masked_cross_entropy(logits, image_targets, mask)

    compute = {
        "contrastive": lambda: contrastive(outputs["image_emb"], outputs["text_emb"], outputs,
                                           valid=paired),
        "mim": lambda: image_term(outputs["mim_logits"], patch_mask_image),
        "mlm": lambda: masking_losses.masked_cross_entropy(outputs["mlm_logits"], text_targets,
                                                           mlm_mask_text),
        "mmm_image": lambda: image_term(outputs["mmm_image_logits"], patch_mask & positive),
        "mmm_text": lambda: masking_losses.masked_cross_entropy(
            outputs["mmm_text_logits"], text_targets, mlm_mask & positive),
        "itm": lambda: masking_losses.matching_loss(outputs["itm_logits"], itm_labels, paired),
    }
    total, metrics = terms.weighted_sum(compute, weights)
    metrics["logit_scale"] = outputs["logit_scale"]
    return total, metrics


def make_scorer(model: flava.Flava, params, tokenizer, mesh,
                config: ml_collections.ConfigDict) -> Scorer:
    """The unimodal CLS embeddings (the contrastive term's); similarity is the cosine."""
    return serving.make_scorer(model, params, tokenizer, mesh, config.data.text_length)


def make_matcher(model: flava.Flava, params, tokenizer, mesh, config: ml_collections.ConfigDict):
    """Matcher whose match(images uint8 [N,S,S,3], tokens int32 [N,L]) -> float [N] is the ITM
    log-odds of row-aligned pairs (unmasked images and text through the multimodal encoder)."""
    return serving.make_matcher(
        lambda p, images, tokens: model.apply({"params": p}, images, tokens, method=model.match),
        params, tokenizer, mesh, config.data.text_length)


def masked_pixels(module: flava.Flava, images, patch_mask):
    """The MIM head's per-patch-normalised pixels [B, N, p*p*3] of the masked images (the
    unimodal masked pass, as the mim term reads it; a `model.apply` method)."""
    _, hidden = module.image_encoder(images, patch_mask)
    return module.mim_head(hidden[:, 1:])


def make_reconstructor(model: flava.Flava, params, tokenizer, mesh,
                       config: ml_collections.ConfigDict) -> Reconstructor:
    """MIM's pixel predictions under the training (BEiT block) masks, scaled back to [-1, 1]
    with each true patch's mean and variance (mim_targets.unnormalize_patches, as MAE shows
    its reconstructions). mim.target="pixels" only; captions are not read."""
    if config.mim.target != "pixels":  # served on its own (a report), not through the names
        raise ValueError(f"FLAVA reconstructs pixels only with mim.target='pixels', not "
                         f"{config.mim.target!r}")
    patch = model.image["patch_size"]
    grid = config.data.image_size // patch
    num_masked, min_block = masking.beit_mask_sizes(grid, grid, config.mim.mask_ratio)
    rebuild = serving.host_function(
        lambda p, images, patch_mask: mim_targets.unnormalize_patches(
            model.apply({"params": p}, images, patch_mask, method=masked_pixels), images, patch),
        mesh)
    return Reconstructor(
        patch=patch,
        draw_masks=lambda rng, batch: masking.beit_block_masks(rng, batch, grid, grid,
                                                               num_masked, min_block),
        reconstruct=lambda images, captions, patch_mask: rebuild(params, images, patch_mask))
