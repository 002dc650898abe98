"""What masked image modelling predicts per patch, chosen by `mim.target`:

  "pixels"  each patch's pixels normalised by its own mean and variance (MAE's norm_pix_loss),
            [B, N, p*p*3], scored with MSE;
  "kmeans"  the index of the nearest of K centroids of normalised patches, fitted by k-means on
            world images at the start of the run (deterministic in the data seed, so a resumed
            run refits the same codebook), [B, N] int, scored with cross-entropy.

A target kind is a function `targets(images uint8 [B, S, S, 3]) -> codes | pixels`; another
kind (e.g. a VQ tokenizer's codes) is one more entry in `make_targets`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

TARGETS = ("pixels", "kmeans")


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


def make_targets(kind: str, patch: int, *, num_codes: int = 0, world_images=None,
                 seed: int = 0) -> Callable[[jax.Array], jax.Array]:
    """targets(images) of `kind` (see the module docstring); "kmeans" fits on `world_images`
    uint8 [M, S, S, 3]."""
    if kind == "pixels":
        return lambda images: normalized_patches(images, patch)
    if kind == "kmeans":
        patches = np.asarray(normalized_patches(jnp.asarray(world_images), patch))
        centroids = jnp.asarray(fit_kmeans(patches.reshape(-1, patches.shape[-1]), num_codes,
                                           seed))
        return lambda images: kmeans_codes(images, centroids, patch)
    raise ValueError(f"mim.target {kind!r} must be one of {', '.join(TARGETS)}")
