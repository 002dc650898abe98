"""Transformer building blocks shared by every tower: attention, MLP, pre-norm block, poolers.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `head_dim`, `vocab`, ...);
`vlm_jax.parallel` maps them to mesh axes, so a layout change is a config edit.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def dense_init(names: tuple[str, ...], init=None):
    """A kernel initializer (default Xavier uniform) tagged with logical axis names."""
    return nn.with_logical_partitioning(init or nn.initializers.xavier_uniform(), names)


def zeros_init(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * jax.nn.sigmoid(1.702 * x)


# Imported checkpoints need the activation they were trained with: "gelu" is the tanh
# approximation (flax's default; HF "gelu_pytorch_tanh"), "gelu_exact" the erf form (HF "gelu").
ACTIVATIONS = {
    "gelu": nn.gelu,
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": quick_gelu,
}


class LayerNorm(nn.Module):
    """LayerNorm whose scale/bias carry the `embed` axis name; statistics in float32."""

    dtype: Dtype = jnp.float32
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.LayerNorm(
            epsilon=self.eps,
            dtype=self.dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
            bias_init=zeros_init(("embed",)),
        )(x)


class Attention(nn.Module):
    """Multi-head attention through `jax.nn.dot_product_attention` (cuDNN/XLA fused paths).

    `mask`: bool [B, 1|H, Lq, Lk], True where attention is allowed. `is_causal` adds the causal
    mask. Queries come from `x`, keys/values from `context` (self-attention when None).
    """

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, mask=None, is_causal: bool = False):
        context = x if context is None else context
        width = x.shape[-1]
        head_dim = width // self.num_heads
        if head_dim * self.num_heads != width:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")

        def project(name, inputs):
            return nn.DenseGeneral(
                (self.num_heads, head_dim),
                dtype=self.dtype,
                kernel_init=dense_init(("embed", "heads", "head_dim")),
                bias_init=zeros_init(("heads", "head_dim")),
                name=name,
            )(inputs)

        q, k, v = project("query", x), project("key", context), project("value", context)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            dtype=self.dtype,
            kernel_init=dense_init(("heads", "head_dim", "embed")),
            bias_init=zeros_init(("embed",)),
            name="out",
        )(out)


class Mlp(nn.Module):
    """Two-layer MLP (the ViT / CLIP block); `activation` names one of ACTIVATIONS."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            kernel_init=dense_init(("embed", "mlp")),
            bias_init=zeros_init(("mlp",)),
        )(x)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} must be one of {sorted(ACTIVATIONS)}")
        x = ACTIVATIONS[self.activation](x)
        return nn.Dense(
            width,
            dtype=self.dtype,
            kernel_init=dense_init(("mlp", "embed")),
            bias_init=zeros_init(("embed",)),
        )(x)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x, mask=None, is_causal: bool = False):
        x = x + Attention(self.num_heads, self.dtype, name="attn")(
            LayerNorm(self.dtype, self.ln_eps, name="norm1")(x), mask=mask, is_causal=is_causal
        )
        mlp = Mlp(self.mlp_dim, self.dtype, self.activation, name="mlp")
        return x + mlp(LayerNorm(self.dtype, self.ln_eps, name="norm2")(x))


class Encoder(nn.Module):
    """A stack of `depth` pre-norm blocks followed by a final LayerNorm."""

    depth: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x, mask=None, is_causal: bool = False):
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dtype, self.ln_eps,
                             self.activation, name=f"block{i}")(x, mask=mask, is_causal=is_causal)
        return LayerNorm(self.dtype, self.ln_eps, name="norm")(x)


class AttentionPool(nn.Module):
    """Multi-head attention pooling with `num_queries` learned queries (MAP head)."""

    num_heads: int
    mlp_dim: int
    num_queries: int = 1
    dtype: Dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"

    @nn.compact
    def __call__(self, tokens: jax.Array, mask=None) -> jax.Array:  # [B, L, D] -> [B, Q, D]
        width = tokens.shape[-1]
        probe = self.param(
            "probe",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (self.num_queries, width),
        )
        queries = jnp.broadcast_to(probe.astype(tokens.dtype), (tokens.shape[0], *probe.shape))
        x = Attention(self.num_heads, self.dtype, name="attn")(queries, tokens, mask=mask)
        mlp = Mlp(self.mlp_dim, self.dtype, self.activation, name="mlp")
        return x + mlp(LayerNorm(self.dtype, self.ln_eps, name="norm")(x))

