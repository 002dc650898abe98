"""Masked-image reconstructions of world val images: a number and a picture.

A masked-image model serves a `Reconstructor` (the trainers' "reconstructor" capability:
MaskVLM's pixel decoder, FLAVA's MIM head with mim.target="pixels"). `run` masks
`evals.reconstruction_size` val images with the model's own masking, rebuilds them, and reports

  masked_mse       MSE on the masked patches, [-1, 1] pixels, of the reconstruction;
  mean_colour_mse  the same for a baseline filling every masked patch with the mean colour of
                   the image's visible pixels (what a model that read nothing could do);

and writes `evals.output_dir`/mim_reconstructions.png (the loop fills output_dir with the
workdir): for `evals.reconstruction_pictures` images, groups of three rows, originals | masked
input (masked patches mid-grey) | reconstruction (visible patches as they were, masked ones
rebuilt).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import ml_collections
import numpy as np

from vlm_jax import mim_targets, pictures
from vlm_jax.data import world

PICTURE = "mim_reconstructions.png"
PER_ROW = 8  # images per row of the picture


@dataclass(frozen=True)
class Reconstructor:
    """`patch`: the model's patch size. `draw_masks(rng, batch) -> bool [B, N]`: its training
    masks (True: hidden). `reconstruct(images uint8 [B, S, S, 3], captions list[str],
    patch_mask bool [B, N]) -> float [B, N, p*p*3]`: every patch's pixels on [-1, 1], rebuilt
    from the masked image (and, for models that read it, the caption)."""

    patch: int
    draw_masks: Callable[[jax.Array, int], np.ndarray]
    reconstruct: Callable[[np.ndarray, Sequence[str], np.ndarray], np.ndarray]


def masked_mse(predicted: np.ndarray, pixels: np.ndarray, patch_mask: np.ndarray) -> float:
    """Mean over the masked patches of each patch's pixel MSE: [B, N, P] twice, bool [B, N]."""
    per_patch = ((np.asarray(predicted, np.float64) - pixels) ** 2).mean(-1)
    return float(per_patch[patch_mask].mean())


def mean_colour_patches(pixels: np.ndarray, patch_mask: np.ndarray) -> np.ndarray:
    """[B, N, p*p*3]: every patch set to the mean colour of its image's visible patches."""
    b, n, size = pixels.shape
    colours = pixels.reshape(b, n, size // 3, 3)
    visible = (~patch_mask)[:, :, None, None]
    mean = (colours * visible).sum((1, 2)) / np.maximum(visible.sum((1, 2)) * (size // 3), 1)
    return np.broadcast_to(mean[:, None, None], colours.shape).reshape(b, n, size)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """[-1, 1] pixels -> uint8 (clipped), as the images were read."""
    return np.clip(np.round((np.asarray(pixels) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_picture(path: str, images: np.ndarray, patch_mask: np.ndarray, predicted: np.ndarray,
                 patch: int) -> str:
    """The PNG described in the module docstring, for images uint8 [B, S, S, 3]."""
    pixels = np.asarray(mim_targets.patchify(images / 127.5 - 1.0, patch))
    hidden = patch_mask[:, :, None]
    masked = np.asarray(mim_targets.unpatchify(np.where(hidden, 0.0, pixels), patch))
    rebuilt = np.asarray(mim_targets.unpatchify(np.where(hidden, predicted, pixels), patch))
    rows = []
    for start in range(0, len(images), PER_ROW):
        part = slice(start, start + PER_ROW)
        rows += [list(images[part]), list(to_uint8(masked[part])), list(to_uint8(rebuilt[part]))]
    return str(pictures.save_image_grid(path, rows))


def run(reconstructor: Reconstructor, eval_config: ml_collections.ConfigDict
        ) -> dict[str, float]:
    """{"reconstruction/val/masked_mse", ".../mean_colour_mse"}, and the PNG written."""
    output_dir = eval_config.get("output_dir", "")
    if not output_dir:
        raise ValueError("eval 'reconstruction' writes its PNG to evals.output_dir, which is "
                         "empty; loop.train and restore.restore_run fill it with the workdir, "
                         "or set --config.evals.output_dir=DIR")
    source = world.World("val", seed=eval_config.seed, image_size=eval_config.image_size)
    examples = [source[i] for i in range(eval_config.reconstruction_size)]
    images = np.stack([example["image"] for example in examples])
    captions = [example["caption"] for example in examples]
    patch_mask = np.asarray(reconstructor.draw_masks(jax.random.key(eval_config.seed),
                                                     len(images)), bool)
    step = eval_config.batch_size
    predicted = np.concatenate([
        np.asarray(reconstructor.reconstruct(images[i:i + step], captions[i:i + step],
                                             patch_mask[i:i + step]), np.float32)
        for i in range(0, len(images), step)])
    pixels = np.asarray(mim_targets.patchify(images / 127.5 - 1.0, reconstructor.patch),
                        np.float64)
    shown = eval_config.reconstruction_pictures
    save_picture(os.path.join(output_dir, PICTURE), images[:shown], patch_mask[:shown],
                 predicted[:shown], reconstructor.patch)
    return {
        "reconstruction/val/masked_mse": masked_mse(predicted, pixels, patch_mask),
        "reconstruction/val/mean_colour_mse": masked_mse(
            mean_colour_patches(pixels, patch_mask), pixels, patch_mask),
    }
