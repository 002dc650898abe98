"""CLIP / SigLIP: an image tower and a text tower projected into one space, no fusion."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import layers, sizes
from vlm_jax.models.bert import BertTextTower
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT

# `text["type"]` -> the text tower's module ("transformer" when absent).
TEXT_TOWERS = {"transformer": TextTransformer, "bert": BertTextTower}


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


# What the contrastive models (TwoTower, Llip, CoCa) build alike, called from their `setup`.


def build_text_tower(text: dict[str, Any], dtype: jnp.dtype) -> nn.Module:
    """The text tower `text` describes; `text["type"]` picks it from TEXT_TOWERS."""
    text = dict(text)
    text_type = text.pop("type", "transformer")
    if text_type not in TEXT_TOWERS:
        raise ValueError(f"text tower type {text_type!r} must be one of {sorted(TEXT_TOWERS)}")
    return TEXT_TOWERS[text_type](**text, dtype=dtype)


def projection(embed_dim: int, dtype: jnp.dtype, use_bias: bool = False) -> nn.Dense:
    """A tower's linear map into the shared embedding space."""
    return nn.Dense(embed_dim, use_bias=use_bias, dtype=dtype,
                    kernel_init=layers.dense_init(("embed", "proj")),
                    bias_init=layers.zeros_init(("proj",)))


def add_logit_params(module: nn.Module) -> None:
    """The learned log-scale t ("logit_scale") and, when `module.logit_bias_init` is set, the
    bias b ("logit_bias"): top-level parameters, as the converters and param rules name them."""
    module.log_scale = module.param(
        "logit_scale", nn.initializers.constant(module.logit_scale_init), ())
    if module.logit_bias_init is not None:
        module.logit_bias = module.param(
            "logit_bias", nn.initializers.constant(module.logit_bias_init), ())


def encode_pairs(module: nn.Module, images: jax.Array | None, text_tokens: jax.Array | None,
                 extras: dict[str, jax.Array]):
    """(module.encode_image(images), module.encode_text(text_tokens), extras + both towers'
    tokens); either input may be None, and so is its output then."""
    image_out = text_emb = None
    if images is not None:
        image_out, image_extras = module.encode_image(images)
        extras["image/tokens"] = image_extras["tokens"]
    if text_tokens is not None:
        text_emb, text_extras = module.encode_text(text_tokens)
        extras["text/tokens"] = text_extras["tokens"]
    return image_out, text_emb, extras


def logit_extras(module: nn.Module) -> dict[str, jax.Array]:
    """{"logit_scale": exp(t) capped at `max_logit_scale`, "logit_bias": b when learned}."""
    extras = {"logit_scale": jnp.minimum(jnp.exp(module.log_scale), module.max_logit_scale)}
    if module.logit_bias_init is not None:
        extras["logit_bias"] = module.logit_bias
    return extras


class TwoTower(nn.Module):
    """Returns `(image_emb [B, E], text_emb [B, E], extras)`, embeddings L2-normalised.

    `extras` holds "logit_scale" (exp of the learned log-scale t, capped at `max_logit_scale`),
    "logit_bias" (when `logit_bias_init` is set: SigLIP) and the towers' tokens.
    Either input may be None to run one tower only. `proj_bias` gives both projections a bias
    (imported SigLIP: its text head has one).
    """

    image: dict[str, Any]
    text: dict[str, Any]
    embed_dim: int
    logit_scale_init: float
    logit_bias_init: float | None = None
    max_logit_scale: float = 100.0
    proj_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.image_tower = ViT(**self.image, dtype=self.dtype)
        self.text_tower = build_text_tower(self.text, self.dtype)
        self.image_proj = projection(self.embed_dim, self.dtype, self.proj_bias)
        self.text_proj = projection(self.embed_dim, self.dtype, self.proj_bias)
        add_logit_params(self)

    def encode_image(self, images: jax.Array):
        pooled, extras = self.image_tower(images)
        return l2_normalize(self.image_proj(pooled).astype(jnp.float32)), extras

    def encode_text(self, text_tokens: jax.Array):
        pooled, extras = self.text_tower(text_tokens)
        return l2_normalize(self.text_proj(pooled).astype(jnp.float32)), extras

    def __call__(self, images: jax.Array | None, text_tokens: jax.Array | None):
        return encode_pairs(self, images, text_tokens, logit_extras(self))


def from_config(model_config: ml_collections.ConfigDict, vocab_size: int,
                dtype=jnp.float32) -> TwoTower:
    """`model.name = "two_tower"`."""
    return tower_pair_from_config(TwoTower, model_config, vocab_size, dtype)


def tower_pair_from_config(model_class, model_config: ml_collections.ConfigDict,
                           vocab_size: int, dtype):
    """A model of an image and a text tower (TwoTower, Llip) from its config section:
    `model.execution` reaches both towers (BERT's excepted); the other scalar fields are the
    class's own."""
    execution = layers.Execution(**model_config.get("execution", {}))
    return model_class(
        image=dict(sizes.tower_kwargs(model_config.image), execution=execution),
        text=sizes.text_kwargs(model_config.text, vocab_size, execution),
        **sizes.model_fields(model_class, model_config, ("image", "text")), dtype=dtype)
