"""A trained VQ image tokenizer, restored from its workdir: images <-> grids of discrete codes.

    tokenizer = load_vq("runs/vq_tiny")
    codes = tokenizer.tokenize(images)      # uint8 [B, S, S, 3] -> int32 [B, h*w]
    images = tokenizer.detokenize(codes)    # int32 [B, h*w] -> uint8 [B, S, S, 3]

Inside another model's jitted loss (FLAVA's masked-image targets, early fusion's image tokens)
call the pure `vlm_jax.models.vq.tokenize(tokenizer.model, tokenizer.params, images)` instead.

`python -m vlm_jax.vq_tokenizer --workdir=runs/vq_tiny` evaluates a run on world val images:
reconstruction MSE (pixels on [-1, 1]) against the mean-colour baseline, codebook usage, and
writes workdir/reconstructions.png (rows: originals | reconstructions) and reconstruction.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from vlm_jax import pictures, restore
from vlm_jax.data import world
from vlm_jax.models import vq


@dataclass(frozen=True)
class ImageTokenizer:
    """A VQ-VAE and its params; `tokenize` / `detokenize` are jitted once per shape."""

    model: vq.VQVAE
    params: Any
    image_size: int

    def __post_init__(self):
        object.__setattr__(self, "_tokenize", jax.jit(
            lambda params, images: vq.tokenize(self.model, params, images)))
        object.__setattr__(self, "_detokenize", jax.jit(
            lambda params, codes: vq.detokenize(self.model, params, codes)))

    @property
    def codebook_size(self) -> int:
        """The number of codes: an early-fusion vocabulary adds this many image tokens."""
        return self.model.codebook_size

    @property
    def num_codes(self) -> int:
        """Codes per image, h * w."""
        return (self.image_size // self.model.downsampling) ** 2

    def tokenize(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] -> int32 [B, h*w] (row-major grid)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (
                self.image_size, self.image_size, 3):
            raise ValueError(f"tokenize takes uint8 images [B, {self.image_size}, "
                             f"{self.image_size}, 3]; got {images.dtype} {images.shape}")
        return np.asarray(self._tokenize(self.params, images))

    def detokenize(self, codes: np.ndarray) -> np.ndarray:
        """int32 [B, h*w] -> uint8 [B, S, S, 3]."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.num_codes:
            raise ValueError(f"detokenize takes codes [B, {self.num_codes}]; got {codes.shape}")
        if codes.size and not 0 <= codes.min() <= codes.max() < self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}); got "
                             f"[{codes.min()}, {codes.max()}]")
        return np.asarray(self._detokenize(self.params, codes.astype(np.int32)))


def load_vq(workdir: str) -> ImageTokenizer:
    """The tokenizer trained in `workdir` (its latest checkpoint)."""
    run = restore.restore_run(workdir)
    if not isinstance(run.model, vq.VQVAE):
        raise ValueError(f"{workdir} holds a {run.config.model.name!r} run, not a VQ tokenizer; "
                         "point at a run of configs/vq.py")
    return ImageTokenizer(run.model, run.params, run.config.data.image_size)


def world_images(n: int, image_size: int, split: str = "val", seed: int = 0) -> np.ndarray:
    """uint8 [n, S, S, 3]: the first n images of a world split."""
    source = world.World(split, seed=seed, image_size=image_size)
    return np.stack([source[i]["image"] for i in range(n)])


def reconstruction_metrics(tokenizer: ImageTokenizer, images: np.ndarray,
                           batch_size: int = 256) -> dict[str, float]:
    """Round-trip error and codebook usage over `images` (uint8 [N, S, S, 3]).

    mse: of detokenize(tokenize(images)) on the [-1, 1] pixel scale; mean_colour_mse: of each
    image's own mean colour (the baseline); perplexity: exp(entropy) of the code histogram;
    codes_used: codes that occur at least once.
    """
    codes = np.concatenate([tokenizer.tokenize(images[i:i + batch_size])
                            for i in range(0, len(images), batch_size)])
    rebuilt = np.concatenate([tokenizer.detokenize(codes[i:i + batch_size])
                              for i in range(0, len(codes), batch_size)])
    pixels, rebuilt_pixels = images / 127.5 - 1.0, rebuilt / 127.5 - 1.0
    counts = np.bincount(codes.reshape(-1), minlength=tokenizer.codebook_size)
    p = counts[counts > 0] / counts.sum()
    return {"mse": float(np.mean((rebuilt_pixels - pixels) ** 2)),
            "mean_colour_mse": float(np.mean(
                (pixels - pixels.mean(axis=(1, 2), keepdims=True)) ** 2)),
            "perplexity": float(math.exp(-np.sum(p * np.log(p)))),
            "codes_used": int(np.sum(counts > 0)), "codebook_size": tokenizer.codebook_size}


def save_reconstructions(tokenizer: ImageTokenizer, images: np.ndarray, path: str,
                         per_row: int = 8) -> str:
    """A PNG at `path`: rows of originals, each followed by a row of their reconstructions."""
    rebuilt = tokenizer.detokenize(tokenizer.tokenize(images))
    rows = []
    for start in range(0, len(images), per_row):
        rows += [list(images[start:start + per_row]), list(rebuilt[start:start + per_row])]
    return str(pictures.save_image_grid(path, rows))


def evaluate_run(workdir: str, num_images: int = 512, num_pictures: int = 16) -> dict:
    """reconstruction_metrics of the run on world val images, written with its PNG."""
    tokenizer = load_vq(workdir)
    images = world_images(num_images, tokenizer.image_size)
    metrics = reconstruction_metrics(tokenizer, images)
    metrics["num_images"] = num_images
    save_reconstructions(tokenizer, images[:num_pictures],
                         os.path.join(workdir, "reconstructions.png"))
    with open(os.path.join(workdir, "reconstruction.json"), "w") as f:
        json.dump(metrics, f, indent=1, sort_keys=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a run of configs/vq.py")
    parser.add_argument("--num_images", type=int, default=512, help="world val images scored")
    args = parser.parse_args(argv)
    metrics = evaluate_run(args.workdir, args.num_images)
    print(json.dumps(metrics, indent=1, sort_keys=True))
    print(f"wrote {os.path.join(args.workdir, 'reconstructions.png')}")


if __name__ == "__main__":
    main()
