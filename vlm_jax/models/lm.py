"""A decoder-only language model in the LLaMA layout, on the shared `layers.Block`.

    tokens ─ token_embedding ─┐   (or embeddings [B, T, D] given directly: a VLM's prefix)
        depth x Block (pre-RMSNorm; causal or prefix-LM attention with RoPE and grouped-query
        heads; SwiGLU MLP) ─ norm ─ lm_head (or token_embedding^T when tied) ─ logits

Parameter tree (a VLM holds it as its submodule "lm", so these sit under "lm/"):

    token_embedding/embedding        [V, D]          ("vocab", "embed")
    block{i}/norm1/scale             [D]             RMSNorm before attention
    block{i}/attn/query/kernel       [D, H, hd]      ("embed", "heads", "head_dim")
    block{i}/attn/key/kernel         [D, KV, hd]     KV = num_kv_heads (grouped queries)
    block{i}/attn/value/kernel       [D, KV, hd]
    block{i}/attn/out/kernel         [H, hd, D]      ("heads", "head_dim", "embed")
      (+ attn/*/bias when attention_bias; attn/query_norm, attn/key_norm when qk_norm:
       scale [hd] for qk_norm_type "rmsnorm", scale and bias [H|KV, hd] for "head_layernorm")
    block{i}/norm2/scale             [D]             RMSNorm before the MLP
    block{i}/mlp/gate|up/kernel      [D, F]          SwiGLU: down(silu(gate(x)) * up(x))
    block{i}/mlp/down/kernel         [F, D]
    norm/scale                       [D]             the final RMSNorm
    lm_head/kernel                   [D, V]          absent with tie_embeddings (embed^T)

RoPE is the rotate-half layout (`layers.apply_rope`), as in Hugging Face Llama checkpoints.
Attention always runs with an explicit mask from `layers.make_attention_mask` (plain causal
when `mask_ar` is None), so one set of blocks serves causal LMs and prefix-LM VLMs alike.
Cached decoding (`init_cache`, `decode`) runs the blocks one by one, so scanned layers are
refused; `vlm_jax.lm_generation` drives it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import layers, sizes


class LM(nn.Module):
    """LLaMA-style decoder. `__call__` returns logits [B, T, V] in float32."""

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    num_kv_heads: int = 0  # 0: num_heads
    head_dim: int = 0  # 0: width // num_heads
    mlp_dim: int = 0  # 0: 4 * width
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qk_norm: bool = False
    qk_norm_type: str = "rmsnorm"  # layers.QK_NORMS; "head_layernorm": Chameleon's
    qk_norm_eps: float = 1e-6
    norm_position: str = "pre"
    attention_bias: bool = False  # Llama: none; some imports (attention_bias=True) have them
    dtype: jnp.dtype = jnp.float32
    execution: layers.Execution = layers.Execution()

    def setup(self):
        if self.execution.scan_layers:
            raise ValueError("execution.scan_layers is not supported by the LM (cached "
                             "decoding runs the blocks one by one); set it to False")
        self.token_embedding = nn.Embed(
            self.vocab_size, self.width, dtype=self.dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vocab", "embed")))
        block = self.execution.remat_block(layers.Block)
        self.blocks = [
            block(self.num_heads, self.mlp_dim or 4 * self.width, self.width, self.dtype,
                  self.norm_eps, "silu", is_causal=False,
                  implementation=self.execution.implementation, norm="rmsnorm",
                  norm_position=self.norm_position, mlp_type="swiglu",
                  num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                  rope_theta=self.rope_theta, qk_norm=self.qk_norm,
                  attention_bias=self.attention_bias, qk_norm_type=self.qk_norm_type,
                  qk_norm_eps=self.qk_norm_eps, name=f"block{i}")
            for i in range(self.depth)]
        self.norm = layers.RMSNorm(self.dtype, self.norm_eps)
        if not self.tie_embeddings:
            # float32 logits: the softmax over a large vocabulary wants them.
            self.lm_head = nn.Dense(self.vocab_size, use_bias=False, dtype=jnp.float32,
                                    kernel_init=layers.dense_init(("embed", "vocab")))

    def embed(self, tokens: jax.Array) -> jax.Array:
        """tokens int [B, T] -> embeddings [B, T, D]."""
        return self.token_embedding(tokens)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final-normed hidden [B, T, D] -> logits [B, T, V] float32."""
        hidden = hidden.astype(jnp.float32)
        if self.tie_embeddings:
            table = self.token_embedding.embedding.astype(jnp.float32)  # [V, D]
            return jnp.einsum("btd,vd->btv", hidden, table)
        return self.lm_head(hidden)

    def _inputs(self, tokens, embeddings) -> jax.Array:
        if (tokens is None) == (embeddings is None):
            raise ValueError("LM takes exactly one of tokens [B, T] or embeddings [B, T, D]")
        return self.embed(tokens) if embeddings is None else embeddings.astype(self.dtype)

    def __call__(self, tokens: jax.Array | None = None, *, embeddings: jax.Array | None = None,
                 mask_ar: jax.Array | None = None, valid: jax.Array | None = None,
                 return_hidden: bool = False):
        """Teacher-forced logits [B, T, V] (position t predicts token t + 1), or
        (logits, final-normed hidden [B, T, D]) with `return_hidden`.

        mask_ar int/bool [B, T]: None is plain causal, else `layers.make_attention_mask`'s rule
        (0 on a bidirectional prefix, then 1). valid bool [B, T]: False on padding (at the
        end); padded positions see nothing and their outputs are meaningless.
        """
        x = self._inputs(tokens, embeddings)  # [B, T, D]
        batch, length = x.shape[:2]
        if mask_ar is None:
            mask_ar = jnp.ones((batch, length), jnp.int32)
        if valid is None:
            valid = jnp.ones((batch, length), bool)
        mask = layers.make_attention_mask(mask_ar, valid)  # [B, 1, T, T]
        x, mask, kv_lengths = layers.pad_sequence(x, mask, self.execution.pad_multiple)
        for block in self.blocks:
            x = block(x, mask, kv_lengths)
        hidden = self.norm(x[:, :length])
        logits = self.logits(hidden)
        return (logits, hidden) if return_hidden else logits

    def init_cache(self, batch_size: int, max_len: int) -> list[layers.KVCache]:
        """Empty per-block KV caches for `max_len` positions, each [B, max_len, KV, hd]."""
        return [block.init_cache(batch_size, max_len) for block in self.blocks]

    def decode(self, embeddings: jax.Array, cache: list, position: jax.Array):
        """Embeddings [B, T, D] at positions position..position+T-1 (earlier ones in `cache`;
        each sees the cached ones and itself causally) -> (logits [B, T, V], updated cache).
        Prefill with T > 1, then one token a step (`embed` the token first)."""
        x = embeddings.astype(self.dtype)
        new_cache = []
        for block, block_cache in zip(self.blocks, cache, strict=True):
            x, block_cache = block.decode(x, block_cache, position)
            new_cache.append(block_cache)
        return self.logits(self.norm(x)), new_cache


def from_config(model_config: ml_collections.ConfigDict, vocab_size: int,
                dtype=jnp.float32) -> LM:
    """`model.name = "lm"`: the LM's fields from `model` (vocab_size from the tokenizer, unless
    the config sets it), `model.execution` its Execution."""
    fields = sizes.model_fields(LM, model_config, ())
    fields["vocab_size"] = fields.get("vocab_size") or vocab_size
    return LM(**fields, execution=layers.Execution(**model_config.get("execution", {})),
              dtype=dtype)
