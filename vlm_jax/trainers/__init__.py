"""Training loops selected by `config.trainer`: each module adds only what is special to it.

A trainer module provides:
  make_loss_fn(model, config, mesh=None) -> loss_fn(params, batch, rng) -> (loss, metrics)
  make_scorer(model, params, tokenizer, mesh, config) -> vlm_jax.evals.scoring.Scorer
and the shared loop in `vlm_jax.loop` does the rest (state, step, checkpoints, metrics, evals).
"""

from __future__ import annotations

import importlib
from types import ModuleType

TRAINERS = ("contrastive", "llip", "coca")


def get_trainer(name: str) -> ModuleType:
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; known: {', '.join(TRAINERS)}")
    return importlib.import_module(f"vlm_jax.trainers.{name}")
