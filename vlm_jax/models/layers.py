"""Transformer building blocks shared by every tower: attention, MLP, pre-norm block, poolers.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `head_dim`, `vocab`, ...);
`vlm_jax.parallel` maps them to mesh axes, so a layout change is a config edit.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Execution:
    """How an encoder is computed, never what: every choice gives the same outputs.

    attention: "xla" or "cudnn" (fused flash attention on NVIDIA GPUs), passed to
        `jax.nn.dot_product_attention(implementation=...)`; "auto" lets JAX choose.
    pad_multiple: pad the sequence to a multiple of this (cuDNN wants 8; a ViT with CLS has
        197 tokens), with the true length passed as `key_value_seq_lengths`; padded rows are cut.
    remat: "none", "full" (recompute each block in the backward pass) or "dots" (save only
        matmul results), trading compute for activation memory.
    scan_layers: one `nn.scan` over stacked block parameters (fast compiles on deep models);
        its parameters are laid out [depth, ...] under "blocks", not "block{i}".
    """

    attention: str = "auto"
    pad_multiple: int = 1
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        if self.attention not in ("auto", "xla", "cudnn"):
            raise ValueError(f"execution.attention {self.attention!r}: use auto, xla or cudnn")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"execution.remat {self.remat!r}: use one of {list(REMAT_POLICIES)}")
        if self.pad_multiple < 1:
            raise ValueError(f"execution.pad_multiple must be >= 1, got {self.pad_multiple}")

    @property
    def implementation(self) -> str | None:
        return None if self.attention == "auto" else self.attention


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
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
    implementation: str | None = None  # jax.nn.dot_product_attention's; None: JAX chooses

    @nn.compact
    def __call__(self, x, context=None, mask=None, is_causal: bool = False, kv_lengths=None):
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
        out = jax.nn.dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, key_value_seq_lengths=kv_lengths,
            implementation=self.implementation)
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
    is_causal: bool = False  # an attribute, not an argument, so remat/scan see only arrays
    implementation: str | None = None

    @nn.compact
    def __call__(self, x, mask=None, kv_lengths=None):
        attention = Attention(self.num_heads, self.dtype, self.implementation, name="attn")
        x = x + attention(LayerNorm(self.dtype, self.ln_eps, name="norm1")(x), mask=mask,
                          is_causal=self.is_causal, kv_lengths=kv_lengths)
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
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x, mask=None, is_causal: bool = False):
        run = self.execution
        length = x.shape[1]
        x, mask, kv_lengths = pad_sequence(x, mask, run.pad_multiple)
        block = EncoderBlock
        if run.remat != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[run.remat])
        settings = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dtype=self.dtype,
                        ln_eps=self.ln_eps, activation=self.activation, is_causal=is_causal,
                        implementation=run.implementation)
        if run.scan_layers:
            scanned = nn.scan(
                _scan_body(block, settings), variable_axes={"params": 0},
                split_rngs={"params": True}, in_axes=(nn.broadcast, nn.broadcast),
                length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = scanned(name="blocks")(x, mask, kv_lengths)
        else:
            for i in range(self.depth):
                x = block(**settings, name=f"block{i}")(x, mask, kv_lengths)
        return LayerNorm(self.dtype, self.ln_eps, name="norm")(x[:, :length])


def _scan_body(block, settings: dict):
    """`block` as a scan body: (x, mask, kv_lengths) -> (x, None)."""

    class Carried(nn.Module):
        @nn.compact
        def __call__(self, x, mask, kv_lengths):
            return block(**settings, name="block")(x, mask, kv_lengths), None

    return Carried


def pad_sequence(x: jax.Array, mask, multiple: int):
    """Pad x [B, L, D] to a multiple of `multiple`; returns (x, mask, true lengths or None).

    Padded keys are excluded through the lengths; a padded query row copies row 0 of `mask`
    (never all-masked, so no NaN reaches the gradient) and is cut off by the caller.
    """
    length = x.shape[1]
    extra = -length % multiple
    if not extra:
        return x, mask, None
    x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    if mask is not None:
        mask = jnp.broadcast_to(mask, (*mask.shape[:2], length, length))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, extra)))  # padded keys: never
        mask = jnp.concatenate([mask, jnp.repeat(mask[:, :, :1], extra, axis=2)], axis=2)
    return x, mask, jnp.full((x.shape[0],), length, jnp.int32)


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

