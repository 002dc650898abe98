"""BLIP-2 stage 1 (Li et al., 2023): a Q-Former trained against a frozen image encoder.

    images ─ ViT (frozen: optim.param_rules) ─ tokens ─ image_features [B, S, C]
    queries ─ Q-Former (cross-attends to image_features) ─ query outputs [B, Q, D]
        ├─ vision_proj ─ L2 ─ query_emb [B, Q, E]   ITC: s(i, t) = t_scale · max_q q_iq · y_t
        └─ with the text (bidirectional) ─ itm_head on each query, mean over queries  ITM
    [CLS] + text ─ Q-Former alone ─ [CLS] output ─ text_proj ─ L2 ─ text_emb [B, E]
    [DEC] + text[:-1] ─ Q-Former after the queries (multimodal causal mask) ─ lm_head   ITG

Text tokens arrive as the tokenizer makes them (tokens, EOS, right-padding, no BOS); the model
puts its task token in front: `cls_id` for ITC and ITM (length L + 1), `dec_id` for ITG (the
text shifted right, so `caption_logits[:, t]` predicts `text_tokens[:, t]`).
The learned temperature is a log-scale like CLIP's: logits = exp(t) x similarity, exp(t) capped
at `max_logit_scale` (BLIP-2: 1 / temp, temp initialised to 0.07).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import layers, sizes, two_tower
from vlm_jax.models.qformer import QFormer
from vlm_jax.models.two_tower import l2_normalize
from vlm_jax.models.vit import ViT


def max_query_similarity(query_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """max over queries of q . y: query_emb [Bi, Q, E], text_emb [Bt, E] -> [Bi, Bt]."""
    return jnp.einsum("iqe,te->itq", query_emb, text_emb).max(axis=-1)


def max_query_score(query_emb: jax.Array, text_emb: jax.Array, params: dict) -> jax.Array:
    """The ITC pair logits t_scale x max_q q . y, as `losses.sharded.PairScore` takes them."""
    return params["scale"] * max_query_similarity(query_emb, text_emb)


class LMHead(nn.Module):
    """BERT's prediction head before the tied word table: dense, activation, LayerNorm, and
    the output bias; returns (hidden [B, L, D], bias [V])."""

    vocab_size: int

    activation: str = "gelu_exact"
    ln_eps: float = 1e-12
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = nn.Dense(x.shape[-1], dtype=self.dtype,
                     kernel_init=layers.dense_init(("embed", "mlp")),
                     bias_init=layers.zeros_init(("mlp",)), name="dense")(x)
        x = layers.LayerNorm(self.dtype, self.ln_eps, name="norm")(
            layers.ACTIVATIONS[self.activation](x))
        return x, self.param("bias", layers.zeros_init(("vocab",)), (self.vocab_size,))


class Blip2(nn.Module):
    """`__call__(images, text_tokens)` -> (query_emb [B, Q, E], text_emb [B, E], extras).

    `extras`: "logit_scale", "image_features" [B, S, C], "itm_logits" [B, 2] and
    "caption_logits" [B, L, V] of the aligned pairs (used to initialise every parameter).
    The trainer calls the parts (`image_features`, `contrastive`, `match`, `caption_logits`)
    itself, so that the ITM negatives can depend on the ITC scores.
    """

    image: dict[str, Any]
    qformer_sizes: dict[str, Any]  # the QFormer's fields (config key model.qformer)
    embed_dim: int
    logit_scale_init: float
    max_logit_scale: float = 100.0
    logit_bias_init: None = None  # no bias: two_tower.add_logit_params reads it
    cls_id: int = 2
    dec_id: int = 2
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.image_tower = ViT(**self.image, dtype=self.dtype)
        self.qformer = QFormer(**self.qformer_sizes, dtype=self.dtype)
        self.vision_proj = two_tower.projection(self.embed_dim, self.dtype, use_bias=True)
        self.text_proj = two_tower.projection(self.embed_dim, self.dtype, use_bias=True)
        self.itm_head = nn.Dense(2, dtype=self.dtype,
                                 kernel_init=layers.dense_init(("embed", None)),
                                 bias_init=layers.zeros_init((None,)))
        self.lm_head = LMHead(self.qformer.vocab_size, self.qformer.activation,
                              self.qformer.ln_eps, self.dtype)
        two_tower.add_logit_params(self)

    def _with_task_token(self, text_tokens: jax.Array, token_id: int, keep_last: bool):
        first = jnp.full_like(text_tokens[:, :1], token_id)
        rest = text_tokens if keep_last else text_tokens[:, :-1]
        return jnp.concatenate([first, rest], axis=1)

    def image_features(self, images: jax.Array) -> jax.Array:
        """The image encoder's final-normed tokens [B, S, C] (CLS and extra tokens dropped)."""
        _, extras = self.image_tower(images)
        return extras["tokens"]

    def encode_queries(self, image_features: jax.Array) -> jax.Array:
        """query_emb [B, Q, E], L2-normalised: the image side of ITC."""
        outputs = self.qformer(image_features, None)  # [B, Q, D]
        return l2_normalize(self.vision_proj(outputs).astype(jnp.float32))

    def encode_image(self, images: jax.Array):
        """(query_emb [B, Q, E], {"image_features"}) of uint8 images (the scorer's image side)."""
        features = self.image_features(images)
        return self.encode_queries(features), {"image_features": features}

    def encode_text(self, text_tokens: jax.Array):
        """(text_emb [B, E] L2-normalised, {"tokens"}): the [CLS] output of the text run alone."""
        outputs = self.qformer(None, self._with_task_token(text_tokens, self.cls_id, True))
        return l2_normalize(self.text_proj(outputs[:, 0]).astype(jnp.float32)), {
            "tokens": outputs}

    def contrastive(self, image_features: jax.Array, text_tokens: jax.Array):
        """(query_emb [B, Q, E], text_emb [B, E], {"logit_scale"})."""
        return (self.encode_queries(image_features), self.encode_text(text_tokens)[0],
                two_tower.logit_extras(self))

    def similarity(self, query_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
        """max_q cosine [Bi, Bt] of encoded images and texts (what the evals rank by)."""
        return max_query_similarity(query_emb, text_emb)

    def match(self, image_features: jax.Array, text_tokens: jax.Array) -> jax.Array:
        """ITM logits [B, 2] (column 1: matched) of pairs (image_features[b], text_tokens[b])."""
        text = self._with_task_token(text_tokens, self.cls_id, True)
        outputs = self.qformer(image_features, text)  # bidirectional
        queries = outputs[:, : self.qformer.num_queries]
        return self.itm_head(queries).astype(jnp.float32).mean(axis=1)

    def caption_logits(self, image_features: jax.Array, text_tokens: jax.Array) -> jax.Array:
        """ITG logits [B, L, V]: position t predicts text_tokens[:, t] from all queries and
        the text before t."""
        text = self._with_task_token(text_tokens, self.dec_id, False)
        outputs = self.qformer(image_features, text, 1)  # text causal, queries apart
        text_outputs = outputs[:, self.qformer.num_queries:]
        hidden, bias = self.lm_head(text_outputs)
        logits = self.qformer.attend_tokens(hidden) + bias
        return logits.astype(jnp.float32)

    def __call__(self, images: jax.Array, text_tokens: jax.Array):
        features = self.image_features(images)
        query_emb, text_emb, extras = self.contrastive(features, text_tokens)
        extras = {**extras, "image_features": features,
                  "itm_logits": self.match(features, text_tokens),
                  "caption_logits": self.caption_logits(features, text_tokens)}
        return query_emb, text_emb, extras


def from_config(model_config: ml_collections.ConfigDict, vocab_size: int,
                dtype=jnp.float32) -> Blip2:
    """`model.name = "blip2"`: `model.image` the frozen ViT, `model.qformer` the Q-Former's
    sizes (width, depth, num_heads, mlp_dim) and fields (num_queries, ...)."""
    execution = layers.Execution(**model_config.get("execution", {}))
    qformer = sizes.sequence_kwargs(model_config.qformer, vocab_size=vocab_size)
    return Blip2(
        image=dict(sizes.tower_kwargs(model_config.image), execution=execution),
        qformer_sizes=dict(qformer, execution=execution),
        **sizes.model_fields(Blip2, model_config, ("image", "qformer")), dtype=dtype)
