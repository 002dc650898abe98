"""Optimizer from config: AdamW with a weight-decay mask, warmup + cosine, gradient clipping."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `optim.lr`, then cosine decay to `optim.lr * optim.end_lr_ratio`."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim.lr * optim.end_lr_ratio,
    )


def decay_mask(params):
    """Weight decay on matrices (kernels, embeddings) only: not on biases, norms, scale, bias."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    optim: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The config's optimizer and its learning-rate schedule (logged as `train/lr`)."""
    if optim.name != "adamw":
        raise ValueError(f"optim.name {optim.name!r} is not supported; use adamw")
    schedule = learning_rate_schedule(optim, total_steps)
    parts = []
    if optim.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    parts.append(optax.adamw(
        schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
        weight_decay=optim.weight_decay, mask=decay_mask,
    ))
    return optax.chain(*parts), schedule
