"""What masked image modelling predicts per patch, chosen by `mim.target`:

  "pixels"  each patch's pixels normalised by its own mean and variance (MAE's norm_pix_loss),
            [B, N, p*p*3], scored with MSE;
  "kmeans"  the index of the nearest of K centroids of normalised patches, fitted by k-means on
            world images at the start of the run and saved with it (`kmeans_codebook`:
            workdir/mim_kmeans.npy, read back instead of refitting when the run resumes),
            [B, N] int, scored with cross-entropy;
  "vq"      the codes of a trained VQ image tokenizer (vlm_jax/vq_tokenizer.py), one per patch:
            its code grid must be the patch grid (`check_vq_fits`), [B, N] int, scored with
            cross-entropy.

A target kind is a function `targets(images uint8 [B, S, S, 3]) -> codes | pixels`, one entry
in `make_targets`. `unnormalize_patches` undoes "pixels"' normalisation for display.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

TARGETS = ("pixels", "kmeans", "vq")
KMEANS_FILE = "mim_kmeans.npy"  # the fitted codebook, in the run's workdir


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, S, S, C] -> [B, N, p*p*C] in ViT's row-major patch order."""
    b, s, _, c = images.shape
    g = s // patch
    x = images.reshape(b, g, patch, g, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * g, patch * patch * c)


def unpatchify(patches: jax.Array, patch: int, channels: int = 3) -> jax.Array:
    """Inverse of `patchify`: [B, N, p*p*C] -> [B, S, S, C]."""
    b, n, _ = patches.shape
    g = int(round(n ** 0.5))
    x = patches.reshape(b, g, g, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * patch, g * patch, channels)


def normalized_patches(images: jax.Array, patch: int, eps: float = 1e-6) -> jax.Array:
    """Patches of [-1, 1] pixels, each normalised to zero mean and unit variance."""
    x = patchify(images.astype(jnp.float32) / 127.5 - 1.0, patch)
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps)


def unnormalize_patches(predicted: jax.Array, images: jax.Array, patch: int,
                        eps: float = 1e-6) -> jax.Array:
    """[-1, 1] pixel patches [B, N, p*p*3] of `normalized_patches`-scale predictions, scaled
    back with the true patches' own mean and variance (as MAE displays its norm_pix
    reconstructions): the picture borrows each patch's mean colour and contrast."""
    x = patchify(images.astype(jnp.float32) / 127.5 - 1.0, patch)
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return predicted * jnp.sqrt(var + eps) + mean


def fit_kmeans(patches: np.ndarray, num_codes: int, seed: int, iterations: int = 20
               ) -> np.ndarray:
    """Lloyd's k-means on patches [M, P] -> centroids float32 [K, P], started by k-means++
    (each next start drawn with probability proportional to its squared distance to the
    nearest start); an emptied cluster keeps its old centroid."""
    rng = np.random.default_rng(seed)
    if len(patches) < num_codes:
        raise ValueError(f"k-means needs >= {num_codes} patches, got {len(patches)}; fit on more "
                         "images or lower mim.num_codes")
    patches = patches.astype(np.float64)
    centroids = [patches[rng.integers(len(patches))]]
    nearest = ((patches - centroids[0]) ** 2).sum(-1)
    for _ in range(num_codes - 1):
        total = nearest.sum()
        pick = rng.choice(len(patches), p=nearest / total) if total > 0 else rng.integers(
            len(patches))
        centroids.append(patches[pick])
        nearest = np.minimum(nearest, ((patches - patches[pick]) ** 2).sum(-1))
    centroids = np.stack(centroids)
    for _ in range(iterations):
        # ||x - c||^2 without the [M, K, P] difference tensor; ||x||^2 does not change the argmin.
        assignment = ((centroids ** 2).sum(-1)[None] - 2 * patches @ centroids.T).argmin(1)
        for k in range(num_codes):
            members = patches[assignment == k]
            if len(members):
                centroids[k] = members.mean(0)
    return centroids.astype(np.float32)


def kmeans_codes(images: jax.Array, centroids: jax.Array, patch: int) -> jax.Array:
    """int32 [B, N]: the nearest centroid of each normalised patch."""
    x = normalized_patches(images, patch)
    distances = (jnp.sum(x * x, -1, keepdims=True) - 2 * x @ centroids.T
                 + jnp.sum(centroids * centroids, -1))
    return jnp.argmin(distances, -1).astype(jnp.int32)


def kmeans_codebook(path: str | None, fit_images: Callable[[], np.ndarray], patch: int,
                    num_codes: int, seed: int) -> np.ndarray:
    """float32 [K, p*p*3]: the centroids saved at `path` when it exists (a resumed run reads
    them back: no images drawn, no refit), else fitted on `fit_images()` uint8 [M, S, S, 3]
    and saved there (path None or "": fitted, not saved)."""
    shape = (num_codes, patch * patch * 3)
    if path and os.path.exists(path):
        centroids = np.load(path)
        if centroids.shape != shape:
            raise ValueError(f"{path} holds a k-means codebook of shape {centroids.shape}, this "
                             f"run needs {shape} (mim.num_codes x patch*patch*3); use a new "
                             "--workdir, or delete that file to refit")
        return centroids.astype(np.float32)
    patches = np.asarray(normalized_patches(jnp.asarray(fit_images()), patch))
    centroids = fit_kmeans(patches.reshape(-1, shape[1]), num_codes, seed)
    if path and jax.process_index() == 0:  # every process fits the same (seeded); one writes
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "wb") as f:  # the file is whole or absent
            np.save(f, centroids)
        os.replace(path + ".tmp", path)
    return centroids


def check_vq_fits(tokenizer, image_size: int, patch: int, mim_dim: int) -> None:
    """ValueError, one line with the fix, unless the VQ `tokenizer` (a vq_tokenizer
    ImageTokenizer) gives one code per patch of `image_size` images cut into `patch` x `patch`
    patches, from a codebook of `mim_dim` codes (the MIM head's outputs)."""
    vq_grid = tokenizer.image_size // tokenizer.model.downsampling
    patch_grid = image_size // patch
    if tokenizer.image_size != image_size or vq_grid != patch_grid:
        raise ValueError(f"mim.target='vq': the VQ tokenizer's {vq_grid}x{vq_grid} code grid "
                         f"(images of {tokenizer.image_size} px, downsampling "
                         f"{tokenizer.model.downsampling}) must be FLAVA's {patch_grid}x"
                         f"{patch_grid} patch grid ({image_size} px, patch {patch}); train the "
                         f"VQ at data.image_size={image_size} with downsampling {patch}, or "
                         "change model.image.patch_size")
    if mim_dim != tokenizer.codebook_size:
        raise ValueError(f"mim.target='vq': model.mim_dim={mim_dim} must equal the VQ codebook "
                         f"size {tokenizer.codebook_size}; set "
                         f"--config.model.mim_dim={tokenizer.codebook_size}")


def make_targets(kind: str, patch: int, *, num_codes: int = 0, fit_images=None,
                 seed: int = 0, kmeans_path: str | None = None, vq_tokenizer=None
                 ) -> Callable[[jax.Array], jax.Array]:
    """targets(images) of `kind` (see the module docstring); "kmeans" reads its codebook from
    `kmeans_path` or fits it on `fit_images()` uint8 [M, S, S, 3] (`kmeans_codebook`); "vq"
    takes the codes of `vq_tokenizer` (checked with `check_vq_fits` by the caller)."""
    if kind == "pixels":
        return lambda images: normalized_patches(images, patch)
    if kind == "kmeans":
        centroids = jnp.asarray(kmeans_codebook(kmeans_path, fit_images, patch, num_codes,
                                                seed))
        return lambda images: kmeans_codes(images, centroids, patch)
    if kind == "vq":
        from vlm_jax.models import vq  # the pure tokenize, traceable inside the loss's jit

        model, params = vq_tokenizer.model, vq_tokenizer.params
        return lambda images: vq.tokenize(model, params, images)
    raise ValueError(f"mim.target {kind!r} must be one of {', '.join(TARGETS)}")
