"""BERT-family text tower (BERT, MiniLM, sentence-transformers encoders): post-norm blocks.

Differs from `TextTransformer` where pretrained BERT checkpoints need it to: the LayerNorm comes
after each residual sum (post-norm) and after the embeddings, token-type embeddings are added,
and there is no final LayerNorm. Built from config with `model.text.type = "bert"`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers


class BertTextTower(nn.Module):
    """Token + position + token-type(0) embeddings -> LayerNorm -> post-norm blocks -> pool.

    `text_tokens` int [B, L], right-padded with `pad_id` (padded keys are masked). Returns
    `(pooled [B, D], {"tokens": [B, L, D], "text_mask": [B, L]})`. `pool`: "mean" over
    non-padding tokens (sentence-transformers' mean pooling) or "first" (the [CLS] token).
    """

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    max_len: int = 512
    type_vocab_size: int = 2
    pool: str = "mean"
    pad_id: int = 0
    ln_eps: float = 1e-12
    activation: str = "gelu_exact"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, text_tokens: jax.Array):
        if self.pool not in ("mean", "first"):
            raise ValueError(f"BERT text pool {self.pool!r} must be one of mean, first")
        length = text_tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"text length {length} exceeds the tower's max_len {self.max_len}")
        text_mask = text_tokens != self.pad_id  # [B, L]

        def table(name, rows, names):
            return self.param(
                name, nn.with_logical_partitioning(nn.initializers.normal(0.02), names),
                (rows, self.width))

        x = nn.Embed(
            self.vocab_size, self.width, dtype=self.dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vocab", "embed")),
            name="token_embedding",
        )(text_tokens)
        positions = table("pos_embedding", self.max_len, (None, "embed"))
        token_types = table("type_embedding", self.type_vocab_size, (None, "embed"))
        # One segment: every token has token type 0, as in single-sentence encoders.
        x = x + (positions[:length] + token_types[0]).astype(x.dtype)
        x = layers.LayerNorm(self.dtype, self.ln_eps, name="embedding_norm")(x)
        mask = text_mask[:, None, None, :]  # [B, 1, 1, L]: padded keys are never attended
        for i in range(self.depth):
            # The original Transformer / BERT block: norm1(x + attn(x)); norm2(x + mlp(x)).
            x = layers.Block(self.num_heads, self.mlp_dim, self.width, self.dtype, self.ln_eps,
                             self.activation, norm_position="post", name=f"block{i}")(x, mask)
        if self.pool == "first":
            pooled = x[:, 0]
        else:
            weights = text_mask[..., None].astype(x.dtype)
            pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        return pooled, {"tokens": x, "text_mask": text_mask}
