"""Model registry: `config.model.name` -> the module that builds it (`from_config`).

Lazy: a family's module is imported only when a config names it, so importing
`vlm_jax.models.layers` (or any one family) loads no other family. A new family adds one line
to FAMILIES and a module with `from_config(model_config, vocab_size, dtype)`.
"""

from __future__ import annotations

import importlib

import jax.numpy as jnp
import ml_collections

from vlm_jax.models.sizes import tower_kwargs  # noqa: F401  (benchmarks size towers with it)

# model.name -> module under vlm_jax.models exposing from_config.
FAMILIES = {
    "two_tower": "two_tower",
    "llip": "llip",
    "coca": "coca",
}


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int, dtype=jnp.float32):
    """Build the model named by `model_config.name` for a tokenizer of `vocab_size`."""
    name = model_config.name
    if name not in FAMILIES:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(FAMILIES)}")
    module = importlib.import_module(f"vlm_jax.models.{FAMILIES[name]}")
    return module.from_config(model_config, vocab_size, dtype)
