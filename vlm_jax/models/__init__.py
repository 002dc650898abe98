"""Model registry: `config.model.name` -> the module that builds it (`from_config`).

Lazy: a family's module is imported only when a config names it, so importing
`vlm_jax.models.layers` (or any one family) loads no other family. A new family adds one line
to FAMILIES and a module with `from_config(model_config, vocab_size, dtype)`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import jax.numpy as jnp
import ml_collections

from vlm_jax.models.sizes import tower_kwargs  # noqa: F401  (benchmarks size towers with it)

MODULE_PREFIX = "module:"
# model.name -> module under vlm_jax.models exposing from_config.
FAMILIES = {
    "two_tower": "two_tower",
    "llip": "llip",
    "coca": "coca",
    "vq": "vq",
    "flava": "flava",
    "maskvlm": "maskvlm",
    "lm": "lm",
    "blip2": "blip2",
    "prefix_vlm": "prefix_vlm",
    "early_fusion": "early_fusion",
}


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int, dtype=jnp.float32):
    """Build the model named by `model_config.name` for a tokenizer of `vocab_size`."""
    return model_module(model_config.name).from_config(model_config, vocab_size, dtype)


def model_module(name: str) -> ModuleType:
    """The module building model `name`: a FAMILIES entry, or "module:<import path>" for a
    model module kept outside the package (as trainers take "module:<path>")."""
    if name.startswith(MODULE_PREFIX):
        path = name[len(MODULE_PREFIX):]
        try:
            return importlib.import_module(path)
        except ImportError as error:
            raise ValueError(f"model {name!r}: cannot import {path!r} ({error}); give an "
                             "importable module path, e.g. module:my_project.model") from None
    if name not in FAMILIES:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(FAMILIES)}, or "
                         "module:<path> for a model module kept elsewhere")
    return importlib.import_module(f"vlm_jax.models.{FAMILIES[name]}")
