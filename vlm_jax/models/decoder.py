"""Causal decoder blocks that run either over a whole sequence (teacher forcing) or one step at
a time against a preallocated key/value cache, and a cross-attention block for encoder-decoders.

A self-attention cache is `{"key", "value"}`, each [B, max_len, heads, head_dim], allocated once
(`kv_cache`) and written in place at the step's position, so a decoding loop has fixed shapes
and compiles once. A cross-attention cache is the same dict over the context tokens, projected
once before decoding (`CrossAttentionBlock.context_keys_values`). Parameter names match
`layers.Attention` / `layers.EncoderBlock` (query, key, value, out; norm1, attn, norm2, mlp).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers

KVCache = dict[str, jax.Array]  # {"key": [B, S, H, Dh], "value": [B, S, H, Dh]}


def kv_cache(batch_size: int, max_len: int, num_heads: int, head_dim: int, dtype) -> KVCache:
    """An empty (zero) self-attention cache for `max_len` positions."""
    shape = (batch_size, max_len, num_heads, head_dim)
    return {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}


def step_mask(position: jax.Array, num_queries: int, max_len: int) -> jax.Array:
    """bool [1, 1, T, max_len]: query t (at position + t) sees the cached keys up to itself."""
    query_positions = position + jnp.arange(num_queries)[:, None]  # [T, 1]
    return (jnp.arange(max_len)[None, :] <= query_positions)[None, None]


class CachedAttention(nn.Module):
    """Multi-head attention over keys/values computed apart (`keys_values`), so they can come
    from a cache. `mask`: bool broadcastable to [B, H, Lq, Lk], True where attention is allowed."""

    width: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        head_dim = self.width // self.num_heads
        if head_dim * self.num_heads != self.width:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        project = lambda: nn.DenseGeneral(
            (self.num_heads, head_dim), dtype=self.dtype,
            kernel_init=layers.dense_init(("embed", "heads", "head_dim")),
            bias_init=layers.zeros_init(("heads", "head_dim")),
        )
        self.query, self.key, self.value = project(), project(), project()
        self.out = nn.DenseGeneral(
            self.width, axis=(-2, -1), dtype=self.dtype,
            kernel_init=layers.dense_init(("heads", "head_dim", "embed")),
            bias_init=layers.zeros_init(("embed",)),
        )

    def keys_values(self, context: jax.Array) -> KVCache:  # [B, S, C] -> 2 x [B, S, H, Dh]
        return {"key": self.key(context), "value": self.value(context)}

    def __call__(self, x: jax.Array, keys_values: KVCache, mask=None, is_causal: bool = False):
        query = self.query(x)
        key, value = (keys_values[name].astype(query.dtype) for name in ("key", "value"))
        out = jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=is_causal)
        return self.out(out)


class CausalBlock(nn.Module):
    """Pre-norm causal self-attention block: x + attn(norm(x)); x + mlp(norm(x))."""

    width: int
    num_heads: int
    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"  # see layers.ACTIVATIONS

    def setup(self):
        self.norm1 = layers.LayerNorm(self.dtype, self.ln_eps)
        self.attn = CachedAttention(self.width, self.num_heads, self.dtype)
        self.norm2 = layers.LayerNorm(self.dtype, self.ln_eps)
        self.mlp = layers.Mlp(self.mlp_dim, self.dtype, self.activation)

    def __call__(self, x: jax.Array, mask=None) -> jax.Array:
        """The whole sequence [B, L, D]; `mask` (optional) narrows the causal mask further."""
        h = self.norm1(x)
        x = x + self.attn(h, self.attn.keys_values(h), mask=mask, is_causal=True)
        return x + self.mlp(self.norm2(x))

    def decode(self, x: jax.Array, cache: KVCache, position: jax.Array):
        """Tokens [B, T, D] at positions position..position+T-1 (earlier ones are in `cache`);
        returns (outputs [B, T, D], cache with this step's keys/values written in)."""
        h = self.norm1(x)
        new = self.attn.keys_values(h)
        cache = {
            name: jax.lax.dynamic_update_slice_in_dim(
                cache[name], new[name].astype(cache[name].dtype), position, axis=1)
            for name in ("key", "value")
        }
        mask = step_mask(position, x.shape[1], cache["key"].shape[1])
        x = x + self.attn(h, cache, mask=mask)
        return x + self.mlp(self.norm2(x)), cache

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        return kv_cache(batch_size, max_len, self.num_heads, self.width // self.num_heads,
                        self.dtype)


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention block: x + attn(norm(x), norm(context)); x + mlp(norm(x)).

    The context enters as its projected keys/values (`context_keys_values`), computed once per
    sequence: the same call serves teacher forcing and every decoding step.
    """

    width: int
    num_heads: int
    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"

    def setup(self):
        self.norm_query = layers.LayerNorm(self.dtype, self.ln_eps)
        self.norm_context = layers.LayerNorm(self.dtype, self.ln_eps)
        self.attn = CachedAttention(self.width, self.num_heads, self.dtype)
        self.norm2 = layers.LayerNorm(self.dtype, self.ln_eps)
        self.mlp = layers.Mlp(self.mlp_dim, self.dtype, self.activation)

    def context_keys_values(self, context: jax.Array) -> KVCache:
        return self.attn.keys_values(self.norm_context(context))

    def __call__(self, x: jax.Array, context_kv: KVCache) -> jax.Array:
        x = x + self.attn(self.norm_query(x), context_kv)
        return x + self.mlp(self.norm2(x))
