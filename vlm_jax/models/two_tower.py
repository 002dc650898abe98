"""CLIP / SigLIP: an image tower and a text tower projected into one space, no fusion."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.bert import BertTextTower
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT

# `text["type"]` -> the text tower's module ("transformer" when absent).
TEXT_TOWERS = {"transformer": TextTransformer, "bert": BertTextTower}


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


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
        text = dict(self.text)
        text_type = text.pop("type", "transformer")
        if text_type not in TEXT_TOWERS:
            raise ValueError(f"text tower type {text_type!r} must be one of {sorted(TEXT_TOWERS)}")
        self.text_tower = TEXT_TOWERS[text_type](**text, dtype=self.dtype)
        proj = lambda name: nn.Dense(
            self.embed_dim, use_bias=self.proj_bias, dtype=self.dtype,
            kernel_init=layers.dense_init(("embed", "proj")),
            bias_init=layers.zeros_init(("proj",)), name=name,
        )
        self.image_proj, self.text_proj = proj("image_proj"), proj("text_proj")
        self.log_scale = self.param(
            "logit_scale", nn.initializers.constant(self.logit_scale_init), ()
        )
        if self.logit_bias_init is not None:
            self.logit_bias = self.param(
                "logit_bias", nn.initializers.constant(self.logit_bias_init), ()
            )

    def encode_image(self, images: jax.Array):
        pooled, extras = self.image_tower(images)
        return l2_normalize(self.image_proj(pooled).astype(jnp.float32)), extras

    def encode_text(self, text_tokens: jax.Array):
        pooled, extras = self.text_tower(text_tokens)
        return l2_normalize(self.text_proj(pooled).astype(jnp.float32)), extras

    def __call__(self, images: jax.Array | None, text_tokens: jax.Array | None):
        extras = {"logit_scale": jnp.minimum(jnp.exp(self.log_scale), self.max_logit_scale)}
        if self.logit_bias_init is not None:
            extras["logit_bias"] = self.logit_bias
        image_emb = text_emb = None
        if images is not None:
            image_emb, image_extras = self.encode_image(images)
            extras["image/tokens"] = image_extras["tokens"]
        if text_tokens is not None:
            text_emb, text_extras = self.encode_text(text_tokens)
            extras["text/tokens"] = text_extras["tokens"]
        return image_emb, text_emb, extras
