"""Mask generators of the masking family (FLAVA, MaskVLM, the single-stream baseline).

Pure functions of an explicit `jax.random` key with static shapes, so they trace inside a
jitted train step (the mask is drawn on the device from the step's rng; no host pipeline
state, and a resumed run draws the same masks as an uninterrupted one):

  * `beit_block_mask`  -- BEiT's block-wise image masking (one grid); `beit_block_masks` for a
    batch; `beit_mask_sizes` scales BEiT's 75-of-196 / blocks >= 16 to another grid.
  * `random_patch_mask` -- exactly round(ratio * N) random patches per row (MAE-style).
  * `mlm_corrupt`       -- BERT's 80/10/10 corruption of a fraction of the maskable tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# BEiT at 224px / patch 16: 75 of the 196 patches of a 14x14 grid, blocks of >= 16 patches.
BEIT_GRID_AREA = 196
BEIT_NUM_MASKED = 75
BEIT_MIN_BLOCK = 16
# Random draws per block attempt: area, log aspect ratio, top, left.
_DRAWS_PER_TRY = 4


def beit_mask_sizes(grid_h: int, grid_w: int, ratio: float = BEIT_NUM_MASKED / BEIT_GRID_AREA
                    ) -> tuple[int, int]:
    """(num_masked, min_block) for a grid: `ratio` of the cells (BEiT: 75/196 = 38%), and the
    minimum block area scaled with the grid area (16 cells of 196 -> round(16 * H*W / 196),
    at least 1), so a 4x4 grid masks 6 cells in blocks of >= 1 and 14x14 gives BEiT's 75 / 16."""
    area = grid_h * grid_w
    num_masked = int(round(ratio * area))
    min_block = max(1, int(round(BEIT_MIN_BLOCK * area / BEIT_GRID_AREA)))
    return num_masked, min_block


def beit_block_mask_from_draws(draws: jax.Array, grid_h: int, grid_w: int, num_masked: int,
                               min_block: int = BEIT_MIN_BLOCK,
                               aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> jax.Array:
    """BEiT's block masking driven by given uniforms `draws` [num_masked, max_tries, 4] in [0, 1).

    Block b, attempt t reads draws[b, t] = (area, log aspect, top, left). The algorithm is
    BEiT's MaskingGenerator: while fewer than `num_masked` cells are set, try up to max_tries
    blocks of area ~ U(min_block, remaining), aspect ~ exp(U(log a0, log a1)),
    h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)), which must satisfy h < H,
    w < W, with a uniform top-left; a block is accepted when it adds 0 < new <= remaining cells
    (only its new cells count). Stop at the first block with no accepted attempt, or at the
    target. Every accepted block adds >= 1 cell, so num_masked blocks always suffice.
    Returns bool [grid_h, grid_w]; the count can end below num_masked (never above).
    """
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    rows = jnp.arange(grid_h)[:, None]
    cols = jnp.arange(grid_w)[None, :]

    def attempt(carry, draw):
        mask, remaining, placed = carry
        # random.uniform(a, b) = a + (b - a) u, also for b < a (remaining below min_block).
        area = min_block + (remaining - min_block) * draw[0]
        ratio = jnp.exp(log_lo + (log_hi - log_lo) * draw[1])
        h = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
        w = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
        fits = (h < grid_h) & (w < grid_w)
        # randint(0, H - h) inclusive.
        top = jnp.minimum(jnp.floor(draw[2] * (grid_h - h + 1)), grid_h - h).astype(jnp.int32)
        left = jnp.minimum(jnp.floor(draw[3] * (grid_w - w + 1)), grid_w - w).astype(jnp.int32)
        block = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        new = jnp.sum(block & ~mask)
        accept = fits & (new > 0) & (new <= remaining) & ~placed
        mask = jnp.where(accept, mask | block, mask)
        return (mask, remaining, placed | accept), jnp.where(accept, new, 0)

    def add_block(carry, block_draws):
        mask, count, stopped = carry
        remaining = num_masked - count
        (mask_out, _, placed), added = jax.lax.scan(attempt, (mask, remaining, stopped),
                                                     block_draws)
        # `placed` was seeded with `stopped`, so a stopped mask is never changed again.
        added = jnp.sum(added)
        stopped = stopped | (added == 0) | (count + added >= num_masked)
        return (mask_out, count + added, stopped), None

    mask0 = jnp.zeros((grid_h, grid_w), bool)
    (mask, _, _), _ = jax.lax.scan(add_block, (mask0, jnp.int32(0), jnp.bool_(num_masked <= 0)),
                                   draws)
    return mask


def beit_block_mask(rng: jax.Array, grid_h: int, grid_w: int, num_masked: int,
                    min_block: int = BEIT_MIN_BLOCK,
                    aspect: tuple[float, float] = (0.3, 1 / 0.3),
                    max_tries: int = 10) -> jax.Array:
    """bool [grid_h, grid_w]: BEiT block-wise mask of about `num_masked` cells (see
    `beit_block_mask_from_draws`; `beit_mask_sizes` gives num_masked/min_block for a grid)."""
    draws = jax.random.uniform(rng, (max(num_masked, 1), max_tries, _DRAWS_PER_TRY))
    return beit_block_mask_from_draws(draws, grid_h, grid_w, num_masked, min_block, aspect)


def beit_block_masks(rng: jax.Array, batch: int, grid_h: int, grid_w: int, num_masked: int,
                     min_block: int = BEIT_MIN_BLOCK,
                     aspect: tuple[float, float] = (0.3, 1 / 0.3),
                     max_tries: int = 10) -> jax.Array:
    """bool [batch, grid_h * grid_w]: one independent `beit_block_mask` per row, flattened in
    row-major patch order (the order ViT patch tokens come in)."""
    keys = jax.random.split(rng, batch)
    masks = jax.vmap(lambda k: beit_block_mask(k, grid_h, grid_w, num_masked, min_block,
                                               aspect, max_tries))(keys)
    return masks.reshape(batch, grid_h * grid_w)


def random_patch_mask(rng: jax.Array, batch: int, num_patches: int, ratio: float) -> jax.Array:
    """bool [batch, num_patches] with exactly round(ratio * num_patches) True per row, uniformly
    at random (the rank of i.i.d. noise, as in MAE)."""
    num_masked = int(round(ratio * num_patches))
    noise = jax.random.uniform(rng, (batch, num_patches))
    rank = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
    return rank < num_masked


def mlm_corrupt(rng: jax.Array, tokens: jax.Array, maskable: jax.Array, rate: float,
                mask_id: int, vocab_size: int, avoid_ids: Sequence[int] = ()
                ) -> tuple[jax.Array, jax.Array]:
    """BERT corruption: (corrupted int32 [B, L], targets_mask bool [B, L]).

    Each maskable token is chosen with probability `rate` (Bernoulli per token, as BERT's and
    HF's collators do); a chosen token becomes `mask_id` with p 0.8, a uniformly random id from
    [0, vocab_size) minus `avoid_ids` with p 0.1 (we never draw pads/specials; HF draws from
    the whole vocabulary), and stays itself with p 0.1. targets_mask marks every chosen
    position (the loss predicts the original token there); non-maskable positions (pads,
    BOS/EOS, CLS) are never chosen nor changed.
    """
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(list(avoid_ids), np.int64))
    if allowed.size == 0:
        raise ValueError(f"mlm_corrupt: avoid_ids {list(avoid_ids)} leave no random token in a "
                         f"vocabulary of {vocab_size}; avoid fewer ids")
    k_pick, k_kind, k_token = jax.random.split(rng, 3)
    chosen = jax.random.bernoulli(k_pick, rate, tokens.shape) & maskable.astype(bool)
    kind = jax.random.uniform(k_kind, tokens.shape)
    random_ids = jnp.asarray(allowed, jnp.int32)[
        jax.random.randint(k_token, tokens.shape, 0, allowed.size)]
    replaced = jnp.where(kind < 0.8, jnp.int32(mask_id),
                         jnp.where(kind < 0.9, random_ids, tokens.astype(jnp.int32)))
    corrupted = jnp.where(chosen, replaced, tokens.astype(jnp.int32))
    return corrupted, chosen
