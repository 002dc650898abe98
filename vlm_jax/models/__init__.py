"""Model registry: `config.model.name` -> a Flax module built from the config."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from vlm_jax.models.coca import CoCa
from vlm_jax.models.layers import Execution
from vlm_jax.models.llip import Llip
from vlm_jax.models.two_tower import TwoTower
from vlm_jax.models.vit import decode_variant

_SIZE_KEYS = ("width", "depth", "num_heads", "mlp_dim", "patch_size")


def tower_kwargs(tower: ml_collections.ConfigDict) -> dict:
    """A tower's kwargs: sizes decoded from `variant`, then any nonzero explicit size wins."""
    kwargs = dict(tower.to_dict())
    variant = kwargs.pop("variant", "")
    sizes = decode_variant(variant) if variant else {}
    for key in _SIZE_KEYS:
        if kwargs.get(key):
            sizes[key] = kwargs[key]
        kwargs.pop(key, None)
    kwargs.update(sizes)
    missing = [k for k in ("width", "depth", "num_heads", "mlp_dim") if k not in kwargs]
    if missing:
        raise ValueError(f"tower config needs a variant or explicit {', '.join(missing)}")
    return kwargs


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int, dtype=jnp.float32):
    """Build the model named by `model_config.name` for a tokenizer of `vocab_size`."""
    name = model_config.name
    if name == "two_tower":
        text = tower_kwargs(model_config.text)
        text.pop("patch_size", None)
        execution = Execution(**model_config.get("execution", {}))
        if text.get("type", "transformer") == "transformer":
            text["execution"] = execution
        return TwoTower(
            image=dict(tower_kwargs(model_config.image), execution=execution),
            text=dict(text, vocab_size=vocab_size),
            embed_dim=model_config.embed_dim,
            logit_scale_init=model_config.logit_scale_init,
            logit_bias_init=model_config.get("logit_bias_init"),
            max_logit_scale=model_config.max_logit_scale,
            proj_bias=model_config.get("proj_bias", False),
            dtype=dtype,
        )
    if name == "llip":
        text = tower_kwargs(model_config.text)
        text.pop("patch_size", None)
        return Llip(
            image=tower_kwargs(model_config.image),
            text=dict(text, vocab_size=vocab_size),
            embed_dim=model_config.embed_dim,
            num_mixture_tokens=model_config.num_mixture_tokens,
            temperature=model_config.temperature,
            logit_scale_init=model_config.logit_scale_init,
            logit_bias_init=model_config.get("logit_bias_init"),
            max_logit_scale=model_config.max_logit_scale,
            dtype=dtype,
        )
    if name == "coca":
        text = tower_kwargs(model_config.text)
        text.pop("patch_size", None)
        multimodal = tower_kwargs(model_config.multimodal)
        multimodal.pop("patch_size", None)
        return CoCa(
            image=tower_kwargs(model_config.image),
            text=dict(text, vocab_size=vocab_size),
            multimodal=multimodal,
            embed_dim=model_config.embed_dim,
            caption_queries=model_config.caption_queries,
            pool_heads=model_config.pool_heads,
            logit_scale_init=model_config.logit_scale_init,
            logit_bias_init=model_config.get("logit_bias_init"),
            max_logit_scale=model_config.max_logit_scale,
            pad_id=model_config.pad_id,
            bos_id=model_config.bos_id,
            ln_eps=model_config.get("ln_eps", 1e-6),
            activation=model_config.get("activation", "gelu"),
            dtype=dtype,
        )
    raise ValueError(f"unknown model name {name!r}; known: two_tower, llip, coca")
