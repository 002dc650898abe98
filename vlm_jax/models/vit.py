"""Vision Transformer image tower; its big_vision-style variants ("B/16") are in `sizes`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers


def to_float_image(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 [0, 255] pixels -> [-1, 1]; float images pass through unchanged."""
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(dtype) / 127.5 - 1.0
    return images.astype(dtype)


class ViT(nn.Module):
    """Patchify -> (+CLS) -> learned positions -> pre-norm encoder -> pool.

    Returns `(pooled [B, D], {"tokens": [B, N, D]})`; `pool` is "cls", "gap" (mean of patch
    tokens) or "map" (multi-head attention pooling). With `num_extra_tokens = K > 0`, K learned
    tokens (e.g. Llip's mixture tokens) join the sequence and their outputs come back as
    `extras["extra_tokens"]` [B, K, D]; pooling and "tokens" see the patch tokens only.
    `pre_norm` adds a LayerNorm before the encoder (OpenAI CLIP's "pre_layrnorm"); `ln_eps` and
    `activation` (layers.ACTIVATIONS) let imported checkpoints compute as they were trained.
    `final_norm=False` drops the encoder's final LayerNorm (for a head that norms after it).
    `feature_layer` k (None: off) adds `extras["feature_tokens"]` [B, N, D]: the patch tokens
    of hidden state k (HF's `hidden_states[k]`, -2 = below the last block; no final norm; CLS
    and extra tokens dropped), LLaVA's image features. Every parameter is still built, so a
    trained tower loads whole.
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int = 16
    pool: str = "map"
    num_extra_tokens: int = 0
    pre_norm: bool = False
    final_norm: bool = True
    ln_eps: float = 1e-6
    activation: str = "gelu"
    feature_layer: int | None = None
    execution: layers.Execution = layers.Execution()  # how, never what: see layers
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array):
        if self.pool not in ("cls", "gap", "map"):
            raise ValueError(f"ViT pool {self.pool!r} must be one of cls, gap, map")
        p = self.patch_size
        x = to_float_image(images, self.dtype)
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"image size {x.shape[1:3]} is not a multiple of patch size {p}")
        x = nn.Conv(
            self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
            kernel_init=layers.dense_init(
                (None, None, None, "embed"), nn.initializers.lecun_normal()),
            bias_init=layers.zeros_init(("embed",)), name="embedding",
        )(x)
        x = x.reshape(x.shape[0], -1, self.width)  # [B, N, D]
        if self.pool == "cls":
            cls = self.param("cls", layers.zeros_init((None, None, "embed")), (1, 1, self.width))
            cls = jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(x.dtype)
            x = jnp.concatenate([cls, x], axis=1)
        positions = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
            (1, x.shape[1], self.width),
        )
        x = x + positions.astype(x.dtype)
        num_extra = self.num_extra_tokens
        if num_extra:
            # No position embedding: each learned token is already distinct.
            extra = self.param(
                "extra_tokens",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
                (1, num_extra, self.width),
            )
            extra = jnp.broadcast_to(extra, (x.shape[0], num_extra, self.width)).astype(x.dtype)
            x = jnp.concatenate([extra, x], axis=1)
        if self.pre_norm:
            x = layers.LayerNorm(self.dtype, self.ln_eps, name="pre_norm")(x)
        # CLS pooling reads one row: the encoder computes its last block for that row apart.
        cls_row = jnp.full((x.shape[0], 1), num_extra) if self.pool == "cls" else None
        encoded = layers.Encoder(self.depth, self.num_heads, self.mlp_dim, self.dtype,
                                 self.ln_eps, self.activation, self.execution,
                                 final_norm=self.final_norm, feature_layer=self.feature_layer,
                                 name="encoder")(x, pool_rows=cls_row)
        if cls_row is not None:
            encoded, cls_out = encoded
        x, features = encoded if self.feature_layer is not None else (encoded, None)
        extra_out, x = x[:, :num_extra], x[:, num_extra:]
        if self.pool == "cls":
            pooled, x = cls_out[:, 0], x[:, 1:]
        elif self.pool == "gap":
            pooled = x.mean(axis=1)
        else:
            pool = layers.AttentionPool(self.num_heads, self.mlp_dim, 1, self.dtype, self.ln_eps,
                                        self.activation, name="map")
            pooled = pool(x)[:, 0]
        extras = {"tokens": x}
        if features is not None:
            extras["feature_tokens"] = features[:, num_extra + (self.pool == "cls"):]
        if num_extra:
            extras["extra_tokens"] = extra_out
        return pooled, extras
