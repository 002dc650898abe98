"""Text transformer tower: causal (CLIP) or bidirectional (SigLIP), pooled at EOS, first or mean."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers


class TextTransformer(nn.Module):
    """Token + learned position embeddings -> pre-norm encoder -> pool.

    `text_tokens` int [B, L] with `pad_id` right-padding. Returns `(pooled [B, D],
    {"tokens": [B, L, D], "text_mask": [B, L]})`. `pool`: "eos" (the last non-padding token,
    where the tokenizer puts EOS; "last" is the same), "first", or "mean" over non-padding tokens.
    """

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    max_len: int = 64
    causal: bool = True
    pool: str = "eos"
    pad_id: int = 0
    # Imported checkpoints: LayerNorm epsilon and MLP activation (see layers.ACTIVATIONS).
    ln_eps: float = 1e-6
    activation: str = "gelu"
    execution: layers.Execution = layers.Execution()  # how, never what: see layers
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, text_tokens: jax.Array):
        if self.pool not in ("eos", "last", "first", "mean"):
            raise ValueError(f"text pool {self.pool!r} must be one of eos, last, first, mean")
        length = text_tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"text length {length} exceeds the tower's max_len {self.max_len}")
        text_mask = text_tokens != self.pad_id  # [B, L]
        x = nn.Embed(
            self.vocab_size, self.width, dtype=self.dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vocab", "embed")),
            name="token_embedding",
        )(text_tokens)
        positions = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.01), (None, "embed")),
            (self.max_len, self.width),
        )
        x = x + positions[:length].astype(x.dtype)
        # Causal: valid tokens never see the right-padding, so no key mask is needed (and the
        # fused causal kernel stays available). Bidirectional: mask padded keys.
        mask = None if self.causal else text_mask[:, None, None, :]
        # A tower pooled at one token reads one row: the encoder computes its last block for
        # that row apart (the full output stays for callers that use the tokens).
        rows = None
        if self.pool in ("eos", "last"):
            rows = jnp.maximum(text_mask.sum(axis=1) - 1, 0)[:, None]
        elif self.pool == "first":
            rows = jnp.zeros((x.shape[0], 1), jnp.int32)
        x = layers.Encoder(self.depth, self.num_heads, self.mlp_dim, self.dtype, self.ln_eps,
                           self.activation, self.execution, name="encoder")(
            x, mask=mask, is_causal=self.causal, pool_rows=rows)
        if rows is not None:
            x, pooled = x
            pooled = pooled[:, 0]
        else:
            weights = text_mask[..., None].astype(x.dtype)
            pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        return pooled, {"tokens": x, "text_mask": text_mask}
