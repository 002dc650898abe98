"""BLIP-2's Q-Former: a BERT-style (post-norm) transformer over learned queries and text.

    [queries ; text] ─ embedding_norm ─┬─ layer 0: self-attention (queries and text together)
                                       │           cross-attention to the image (queries only)
                                       │           FFN: mlp_query on queries, mlp on text
                                       ├─ layer 1: self-attention, FFNs (no cross-attention)
                                       └─ ...      cross-attention every `cross_attention_frequency`
                                                   layers (layer i with i % frequency == 0)

One set of self-attention weights serves queries and text; the queries and the text have
separate FFNs (Hugging Face `intermediate_query`/`output_query` vs `intermediate`/`output`).
Which position sees which is the shared mask rule (`layers.make_attention_mask`): queries carry
mask_ar 0, text mask_ar 0 (bidirectional: ITC, ITM) or 1 (causal: ITG), so in the causal case
queries see queries only and each text token sees every query and the text before it.
Laid out as `transformers.Blip2QFormerModel` with its text embeddings (word + position, the
embedding LayerNorm over queries and text alike), so its weights copy over one to one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers


class QFormerLayer(nn.Module):
    """Self-attention over [queries ; text], cross-attention of the queries to the image
    (when `cross_attention`), then each part's FFN; every residual is post-norm (BERT)."""

    num_heads: int
    mlp_dim: int
    width: int
    cross_attention: bool
    dtype: jnp.dtype = jnp.float32
    ln_eps: float = 1e-12
    activation: str = "gelu_exact"
    implementation: str | None = None

    def _norm(self, name: str) -> nn.Module:
        return layers.LayerNorm(self.dtype, self.ln_eps, name=name)

    def _attention(self, name: str) -> nn.Module:
        return layers.Attention(self.num_heads, self.width, self.dtype, self.implementation,
                                name=name)

    def _ffn(self, x: jax.Array, name: str) -> jax.Array:
        mlp = layers.Mlp(self.mlp_dim, self.dtype, self.activation, name=name)
        return self._norm(f"{name}_norm")(x + mlp(x))

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, num_queries: int,
                 image_features: jax.Array | None) -> jax.Array:
        """x [B, Q + L, D] (Q = num_queries, possibly 0), mask [B, 1, Q+L, Q+L],
        image_features [B, S, C] (None when Q = 0) -> [B, Q + L, D]."""
        x = layers.constrain(x)
        x = self._norm("self_attention_norm")(x + self._attention("self_attention")(x, mask=mask))
        queries, text = x[:, :num_queries], x[:, num_queries:]
        parts = []
        if num_queries:
            if self.cross_attention:
                attended = self._attention("cross_attention")(queries, image_features)
                queries = self._norm("cross_attention_norm")(queries + attended)
            parts.append(self._ffn(queries, "mlp_query"))
        if text.shape[1]:
            parts.append(self._ffn(text, "mlp"))
        return layers.constrain(jnp.concatenate(parts, axis=1))


class QFormer(nn.Module):
    """`__call__(image_features, text_tokens, text_mask_ar)` -> hidden states [B, Q + L, D].

    image_features float [B, S, C] (the frozen image encoder's tokens) or None: with them the
    `num_queries` learned queries lead the sequence and cross-attend to them; without, the
    text runs alone (Q = 0). text_tokens int [B, L] (right-padded with `pad_id`) or None.
    `text` False builds no word and position tables (BLIP-2 stage 2 and MiniGPT-4 read the
    queries alone): such a Q-Former takes text_tokens None only.
    text_mask_ar int [L] or [B, L]: 0 bidirectional text, 1 causal (default 0). Padded text
    rows are meaningless (they see nothing); callers mask them out.
    """

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    num_queries: int = 32
    cross_attention_frequency: int = 2
    max_len: int = 512
    pad_id: int = 0
    ln_eps: float = 1e-12
    activation: str = "gelu_exact"
    dtype: jnp.dtype = jnp.float32
    execution: layers.Execution = layers.Execution()
    text: bool = True

    def setup(self):
        if self.num_queries < 1:
            raise ValueError(f"the Q-Former needs num_queries >= 1, got {self.num_queries}")
        if self.cross_attention_frequency < 1:
            raise ValueError("qformer.cross_attention_frequency must be >= 1, got "
                             f"{self.cross_attention_frequency}")
        normal = nn.initializers.normal(0.02)
        self.query_tokens = self.param(
            "query_tokens", nn.with_logical_partitioning(normal, (None, "embed")),
            (self.num_queries, self.width))
        if self.text:
            self.token_embedding = nn.Embed(
                self.vocab_size, self.width, dtype=self.dtype,
                embedding_init=nn.with_logical_partitioning(normal, ("vocab", "embed")))
            self.pos_embedding = self.param(
                "pos_embedding", nn.with_logical_partitioning(normal, (None, "embed")),
                (self.max_len, self.width))
        self.embedding_norm = layers.LayerNorm(self.dtype, self.ln_eps)
        # Unrolled and never rematerialised: the layers alternate in structure (with and
        # without cross-attention) and take the query count as a Python int.
        self.layers = [
            QFormerLayer(self.num_heads, self.mlp_dim, self.width,
                  cross_attention=i % self.cross_attention_frequency == 0, dtype=self.dtype,
                  ln_eps=self.ln_eps, activation=self.activation,
                  implementation=self.execution.implementation, name=f"layer{i}")
            for i in range(self.depth)
        ]

    def embed_text(self, text_tokens: jax.Array) -> jax.Array:
        """Word + position embeddings [B, L, D], before the embedding LayerNorm."""
        if not self.text:
            raise ValueError("this Q-Former was built with text=False (queries only); it has "
                             "no word table to embed text tokens with")
        length = text_tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"Q-Former text length {length} exceeds qformer.max_len "
                             f"{self.max_len}; raise max_len or shorten data.text_length")
        return self.token_embedding(text_tokens) + self.pos_embedding[:length].astype(self.dtype)

    def attend_tokens(self, text_embeddings: jax.Array) -> jax.Array:
        """text embeddings [B, L, D] -> vocabulary logits [B, L, V] (the tied word table)."""
        return self.token_embedding.attend(text_embeddings)

    def __call__(self, image_features: jax.Array | None, text_tokens: jax.Array | None,
                 text_mask_ar: jax.Array | int = 0) -> jax.Array:
        parts, mask_ar, valid = [], [], []
        if image_features is not None:
            batch = image_features.shape[0]
            parts.append(jnp.broadcast_to(self.query_tokens.astype(self.dtype),
                                          (batch, self.num_queries, self.width)))
            mask_ar.append(jnp.zeros((batch, self.num_queries), jnp.int32))
            valid.append(jnp.ones((batch, self.num_queries), bool))
        if text_tokens is not None:
            batch, length = text_tokens.shape
            parts.append(self.embed_text(text_tokens))
            mask_ar.append(jnp.broadcast_to(jnp.asarray(text_mask_ar, jnp.int32), (batch, length)))
            valid.append(text_tokens != self.pad_id)
        if not parts:
            raise ValueError("the Q-Former needs image features, text tokens or both")
        num_queries = self.num_queries if image_features is not None else 0
        x = self.embedding_norm(jnp.concatenate(parts, axis=1))  # [B, Q + L, D]
        mask = layers.make_attention_mask(jnp.concatenate(mask_ar, 1), jnp.concatenate(valid, 1))
        for layer in self.layers:
            x = layer(x, mask, num_queries, image_features)
        return x
