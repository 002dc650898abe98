"""CoCa (Yu et al., 2022): contrastive captioners, laid out like open_clip's CoCa.

    images ─ ViT ─ tokens ─┬─ contrastive pooler (1 query) ─ image_proj ─ image_emb
                           └─ caption pooler (caption_queries queries) ─ caption_tokens ─┐
    text ─ [BOS] + text[:-1] ─ unimodal half (causal, [CLS] appended last)               │
             ├─ [CLS] output ─ norm ─ text_proj ─ text_emb                               │
             └─ token states ─ multimodal half (cross-attends to caption_tokens) ◄───────┘
                               ─ norm ─ LM head ─ caption_logits
    Multimodal half: per layer a causal self-attention block, then a cross-attention block.

`pool_layout` arranges the image poolers as one of open_clip's two layouts:
  - "parallel" (the paper's; open_clip's `attentional_pool="parallel"`): two poolers, of 1 and
    `caption_queries` queries, both read the ViT's final-normed tokens;
  - "single" (open_clip's default, `attentional_pool=True`, which its released CoCa weights
    use): one pooler of `caption_queries + 1` queries reads the ViT's tokens without a final
    norm, a LayerNorm follows it; its first output is the contrastive embedding (through
    image_proj), the other `caption_queries` are the caption tokens.
Text tokens arrive as the tokenizer makes them (tokens, EOS,
right-padding, no BOS); the model prepends BOS itself, so `caption_logits[:, t]` predicts
`text_tokens[:, t]`. Decoding runs the unimodal and multimodal halves one token at a time
against a fixed-size KV cache (`init_cache`, `decode_step`); `vlm_jax.generation` drives it.
Both halves are stacks of `layers.Block`; `execution` (attention kernel, padding, remat) applies
to the ViT and to both halves alike.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import layers, sizes, two_tower
from vlm_jax.models.two_tower import l2_normalize
from vlm_jax.models.vit import ViT

POOL_LAYOUTS = ("parallel", "single")


def decoder_inputs(text_tokens: jax.Array, bos_id: int) -> jax.Array:
    """Teacher-forcing inputs [B, L]: BOS then the text shifted right by one."""
    bos = jnp.full_like(text_tokens[:, :1], bos_id)
    return jnp.concatenate([bos, text_tokens[:, :-1]], axis=1)


class AttentionalPooler(nn.Module):
    """`num_queries` learned queries (layer-normed) attend once over the layer-normed tokens."""

    width: int
    num_queries: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32
    ln_eps: float = 1e-6

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:  # [B, N, C] -> [B, Q, width]
        queries = self.param(
            "queries", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
            (self.num_queries, self.width),
        )
        queries = layers.LayerNorm(self.dtype, self.ln_eps, name="norm_query")(
            queries.astype(self.dtype))
        context = layers.LayerNorm(self.dtype, self.ln_eps, name="norm_context")(tokens)
        queries = jnp.broadcast_to(queries, (tokens.shape[0], *queries.shape))
        attention = layers.Attention(self.num_heads, self.width, self.dtype, name="attn")
        return attention(queries, context)


def causal_blocks(half: nn.Module, depth: int, cross_attention: bool = False) -> list:
    """`depth` blocks of a decoder half: causal self-attention, or cross-attention to the image
    (not causal: every text position sees every caption token), built as `half.execution` says.
    Scanned layers are refused: the KV-cache decoding steps through the blocks one by one."""
    run = half.execution
    if run.scan_layers:
        raise ValueError("execution.scan_layers is not supported by CoCa's decoder halves "
                         "(cached decoding runs the blocks one by one); set it to False")
    block = run.remat_block(layers.Block)
    return [block(half.num_heads, half.mlp_dim, half.width, half.dtype, half.ln_eps,
                  half.activation, is_causal=not cross_attention,
                  implementation=run.implementation, cross_attention=cross_attention)
            for _ in range(depth)]


class UnimodalDecoder(nn.Module):
    """Token + position embeddings, a learned [CLS] appended after the last position, causal
    blocks. Returns the normed [CLS] output (the text embedding, before projection) and the
    token states that feed the multimodal half (not normed, as in open_clip)."""

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    max_len: int
    pad_id: int = 0
    dtype: jnp.dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"
    legacy_cls_mask: bool = False
    execution: layers.Execution = layers.Execution()

    def setup(self):
        self.token_embedding = nn.Embed(
            self.vocab_size, self.width, dtype=self.dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vocab", "embed")),
        )
        # One position more than max_len, for the [CLS] after the last text position.
        self.pos_embedding = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.01), (None, "embed")),
            (self.max_len + 1, self.width),
        )
        self.cls_embedding = self.param(
            "cls_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.01), ("embed",)),
            (self.width,),
        )
        self.blocks = causal_blocks(self, self.depth)
        self.norm = layers.LayerNorm(self.dtype, self.ln_eps)

    def __call__(self, inputs: jax.Array):  # [B, L] -> ([B, D], [B, L, D])
        batch, length = inputs.shape
        if length > self.max_len:
            raise ValueError(f"text length {length} exceeds the decoder's max_len {self.max_len}")
        # The [CLS] always takes the last position embedding (where open_clip's fixed-length
        # context puts it), so the text embedding does not depend on how much padding follows.
        cls = self.cls_embedding + self.pos_embedding[self.max_len]
        cls = jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width))
        tokens = self.token_embedding(inputs) + self.pos_embedding[:length].astype(self.dtype)
        x = jnp.concatenate([tokens, cls], axis=1)
        # Text tokens are causal, so they never see the right-padding or the [CLS]; the [CLS]
        # (last) sees every real token but no padding.
        valid = jnp.concatenate([inputs != self.pad_id, jnp.ones((batch, 1), bool)], axis=1)
        if self.legacy_cls_mask:
            # open_clip's default mask, which its released CoCa weights were trained with: the
            # key validity is shifted right by one position, so the [CLS] also sees the first
            # padding position and sees itself only when the text fills the context. Real
            # tokens see the same keys either way, so cached decoding is unaffected.
            valid = jnp.concatenate([jnp.ones((batch, 1), bool), inputs != self.pad_id], axis=1)
        mask = valid[:, None, None, :]  # [B, 1, 1, L + 1]
        x, mask, kv_lengths = layers.pad_sequence(x, mask, self.execution.pad_multiple)
        for block in self.blocks:
            x = block(x, mask, kv_lengths)
        return self.norm(x[:, length]), x[:, :length]

    def decode(self, token: jax.Array, cache: list, position: jax.Array):
        """One input token [B] at `position` -> (state [B, 1, D], updated cache)."""
        x = self.token_embedding(token[:, None])
        x = x + jax.lax.dynamic_slice_in_dim(self.pos_embedding, position, 1).astype(x.dtype)
        new_cache = []
        for block, block_cache in zip(self.blocks, cache, strict=True):
            x, block_cache = block.decode(x, block_cache, position)
            new_cache.append(block_cache)
        return x, new_cache

    def init_cache(self, batch_size: int, max_len: int) -> list:
        return [block.init_cache(batch_size, max_len) for block in self.blocks]


class MultimodalDecoder(nn.Module):
    """Per layer: causal self-attention block, cross-attention block over image tokens; then
    the final norm and the LM head (no bias) giving logits [B, L, vocab]."""

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"
    execution: layers.Execution = layers.Execution()

    def setup(self):
        self.self_blocks = causal_blocks(self, self.depth)
        self.cross_blocks = causal_blocks(self, self.depth, cross_attention=True)
        self.norm = layers.LayerNorm(self.dtype, self.ln_eps)
        self.lm_head = nn.Dense(
            self.vocab_size, use_bias=False, dtype=self.dtype,
            kernel_init=layers.dense_init(("embed", "vocab")),
        )

    def context_keys_values(self, image_tokens: jax.Array) -> list:
        """Each cross-attention layer's keys/values of the image tokens, computed once."""
        return [block.context_keys_values(image_tokens) for block in self.cross_blocks]

    def __call__(self, x: jax.Array, context_kv: list) -> jax.Array:  # [B, L, D] -> [B, L, V]
        length = x.shape[1]
        # Padded query rows are cut at the end; the context (caption tokens) is not padded.
        x, _, kv_lengths = layers.pad_sequence(x, None, self.execution.pad_multiple)
        for self_block, cross_block, kv in zip(
                self.self_blocks, self.cross_blocks, context_kv, strict=True):
            x = cross_block(self_block(x, None, kv_lengths), None, None, kv)
        return self.lm_head(self.norm(x[:, :length]))

    def decode(self, x: jax.Array, cache: list, context_kv: list, position: jax.Array):
        """One state [B, 1, D] at `position` -> (logits [B, 1, V], updated self-attention cache)."""
        new_cache = []
        for self_block, cross_block, block_cache, kv in zip(
                self.self_blocks, self.cross_blocks, cache, context_kv, strict=True):
            x, block_cache = self_block.decode(x, block_cache, position)
            x = cross_block(x, None, None, kv)
            new_cache.append(block_cache)
        return self.lm_head(self.norm(x)), new_cache

    def init_cache(self, batch_size: int, max_len: int) -> list:
        return [block.init_cache(batch_size, max_len) for block in self.self_blocks]


class CoCa(nn.Module):
    """Returns `(image_emb [B, E], text_emb [B, E], extras)`, embeddings L2-normalised, like
    `TwoTower`; extras: "logit_scale" (exp(t) capped at `max_logit_scale`), "logit_bias" (when
    `logit_bias_init` is set), "caption_logits" [B, L, vocab] (position t predicts text t).

    `image`: ViT kwargs (pool "gap" or "cls"; CoCa pools the ViT tokens itself, with "cls" the
    class token among them, as in open_clip). `text`: the unimodal half (vocab_size, width,
    depth, num_heads, mlp_dim, max_len). `multimodal`: the multimodal half (width equal to the
    text width, depth, num_heads, mlp_dim). `ln_eps` and `activation` (layers.ACTIVATIONS)
    apply to the poolers and both halves (open_clip: 1e-5, "gelu_exact"); the ViT takes its
    own from `image`. `pool_layout`: "parallel" or "single" (module docstring).
    `legacy_cls_mask`: open_clip's default [CLS] mask (for its released weights).
    """

    image: dict[str, Any]
    text: dict[str, Any]
    multimodal: dict[str, Any]
    embed_dim: int
    caption_queries: int = 256
    pool_heads: int = 8
    pool_layout: str = "parallel"
    legacy_cls_mask: bool = False
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None
    max_logit_scale: float = 100.0
    pad_id: int = 0
    bos_id: int = 2
    ln_eps: float = 1e-6
    activation: str = "gelu"
    execution: layers.Execution = layers.Execution()  # the ViT's and both decoder halves'
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        if self.image.get("pool", "map") == "map":
            raise ValueError("CoCa pools the ViT tokens with its own attentional poolers; set "
                             "the image tower's pool to 'gap' or 'cls' (a 'map' head would be "
                             "unused)")
        width = self.text["width"]
        if self.multimodal["width"] != width:
            raise ValueError(f"multimodal width {self.multimodal['width']} must equal the text "
                             f"width {width}: the halves share one residual stream")
        if self.pool_layout not in POOL_LAYOUTS:
            raise ValueError(f"model.pool_layout {self.pool_layout!r} must be one of "
                             f"{', '.join(POOL_LAYOUTS)}")
        single = self.pool_layout == "single"
        # "single" norms after its pooler (pool_norm), so the ViT's own final norm is left out.
        self.image_tower = ViT(**{"execution": self.execution, **self.image},
                               final_norm=not single, dtype=self.dtype)
        if single:
            self.pool = AttentionalPooler(
                width, self.caption_queries + 1, self.pool_heads, self.dtype, self.ln_eps)
            self.pool_norm = layers.LayerNorm(self.dtype, self.ln_eps)
        else:
            self.contrastive_pool = AttentionalPooler(
                width, 1, self.pool_heads, self.dtype, self.ln_eps)
            self.caption_pool = AttentionalPooler(
                width, self.caption_queries, self.pool_heads, self.dtype, self.ln_eps)
        norms = dict(dtype=self.dtype, ln_eps=self.ln_eps, activation=self.activation,
                     execution=self.execution)
        self.unimodal = UnimodalDecoder(**self.text, pad_id=self.pad_id,
                                        legacy_cls_mask=self.legacy_cls_mask, **norms)
        self.multimodal_decoder = MultimodalDecoder(
            vocab_size=self.text["vocab_size"], **self.multimodal, **norms)
        self.image_proj = two_tower.projection(self.embed_dim, self.dtype)
        self.text_proj = two_tower.projection(self.embed_dim, self.dtype)
        two_tower.add_logit_params(self)

    def encode_image(self, images: jax.Array):
        """images [B, S, S, 3] -> (image_emb [B, E], {"caption_tokens": [B, Q, D], "tokens"})."""
        cls, extras = self.image_tower(images)
        tokens = extras["tokens"]
        if self.image.get("pool") == "cls":
            # The class token's output is one more token for the poolers (open_clip's CoCa);
            # the embeddings come from the poolers, not from it.
            tokens = jnp.concatenate([cls[:, None].astype(tokens.dtype), tokens], axis=1)
        if self.pool_layout == "single":
            pooled_queries = self.pool_norm(self.pool(tokens))  # [B, 1 + Q, D]
            pooled, caption_tokens = pooled_queries[:, 0], pooled_queries[:, 1:]
        else:
            pooled = self.contrastive_pool(tokens)[:, 0]
            caption_tokens = self.caption_pool(tokens)
        image_emb = l2_normalize(self.image_proj(pooled).astype(jnp.float32))
        return image_emb, {"caption_tokens": caption_tokens, "tokens": tokens}

    def encode_text(self, text_tokens: jax.Array):
        """text_tokens [B, L] -> (text_emb [B, E], {"tokens": unimodal states [B, L, D]})."""
        cls, states = self.unimodal(decoder_inputs(text_tokens, self.bos_id))
        return l2_normalize(self.text_proj(cls).astype(jnp.float32)), {"tokens": states}

    def caption_logits(self, caption_tokens: jax.Array, text_tokens: jax.Array) -> jax.Array:
        """Teacher-forcing logits [B, L, vocab] of `text_tokens` given the image's caption
        tokens (from `encode_image`)."""
        _, text_extras = self.encode_text(text_tokens)
        return self._multimodal_logits(text_extras["tokens"], caption_tokens)

    def _multimodal_logits(self, unimodal_states: jax.Array, caption_tokens: jax.Array):
        context_kv = self.multimodal_decoder.context_keys_values(caption_tokens)
        return self.multimodal_decoder(unimodal_states, context_kv)

    def __call__(self, images: jax.Array, text_tokens: jax.Array):
        image_emb, image_extras = self.encode_image(images)
        text_emb, text_extras = self.encode_text(text_tokens)  # one unimodal pass for both terms
        extras = {**two_tower.logit_extras(self), "caption_logits": self._multimodal_logits(
            text_extras["tokens"], image_extras["caption_tokens"])}
        return image_emb, text_emb, extras

    def init_cache(self, caption_tokens: jax.Array, max_len: int) -> dict:
        """The decoding cache for `max_len` positions: empty self-attention KV caches of both
        halves, and the image tokens projected to each cross-attention layer's keys/values."""
        if max_len > self.text["max_len"]:
            raise ValueError(f"decoding max_len {max_len} exceeds the decoder's max_len "
                             f"{self.text['max_len']}")
        batch_size = caption_tokens.shape[0]
        return {
            "unimodal": self.unimodal.init_cache(batch_size, max_len),
            "multimodal": self.multimodal_decoder.init_cache(batch_size, max_len),
            "context": self.multimodal_decoder.context_keys_values(caption_tokens),
        }

    def decode_step(self, cache: dict, token: jax.Array, position: jax.Array):
        """The decoder step `vlm_jax.decoding` drives: input token [B] at `position` ->
        (logits [B, vocab] for the token at `position`, updated cache)."""
        x, unimodal_cache = self.unimodal.decode(token, cache["unimodal"], position)
        logits, multimodal_cache = self.multimodal_decoder.decode(
            x, cache["multimodal"], cache["context"], position)
        cache = {**cache, "unimodal": unimodal_cache, "multimodal": multimodal_cache}
        return logits[:, 0], cache



def from_config(model_config: ml_collections.ConfigDict, vocab_size: int,
                dtype=jnp.float32) -> CoCa:
    """`model.name = "coca"`: `model.execution` reaches the ViT and both decoder halves."""
    return CoCa(
        image=sizes.tower_kwargs(model_config.image),
        text=sizes.sequence_kwargs(model_config.text, vocab_size=vocab_size),
        multimodal=sizes.sequence_kwargs(model_config.multimodal),
        execution=layers.Execution(**model_config.get("execution", {})),
        **sizes.model_fields(CoCa, model_config, ("image", "text", "multimodal")), dtype=dtype)
