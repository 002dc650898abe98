"""Llip: the image is a set of K mixture embeddings, mixed into one vector per caption.

The ViT carries K learned mixture tokens; their outputs, projected, are the mixture
m_i = [m_i1 .. m_iK]. For every (image i, caption j) one cross-attention, with the text
embedding y_j as the query and the mixture as keys and values, gives the caption-conditioned
image vector

    h_{i|j} = W_o sum_k alpha_ijk W_v m_ik,   alpha_ij = softmax_k((W_q y_j) . (W_k m_ik) / tau)

scored against y_j by the cosine, scaled and biased as in SigLIP. With K = 1 and W_v = W_o = I
this is exactly SigLIP (alpha = 1, h = m).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import layers, two_tower
from vlm_jax.models.two_tower import l2_normalize
from vlm_jax.models.vit import ViT

# The cross-attention's [E, E] kernels, applied as row vectors: x @ W.
ATTENTION_KERNELS = ("query", "key", "value", "out")
# Inside the norm of h, as in `two_tower.l2_normalize`, so that K = 1 reproduces SigLIP.
_NORM_EPS = 1e-6


def conditioned_similarity(
    mixture: jax.Array, text_emb: jax.Array, kernels: dict[str, jax.Array], temperature: float
) -> jax.Array:
    """cos(h_{i|j}, y_j) for every pair: mixture [Bi, K, E], text_emb [Bt, E] -> [Bi, Bt].

    h_{i|j} is never materialised ([Bi, Bt, E]): it is a convex combination of the per-token
    vectors u_ik = W_o W_v m_ik, so h.y = sum_k alpha_k (u_k . y) and
    |h|^2 = alpha^T G alpha with the Gram matrix G_i = [u_ik . u_il]. Intermediates are
    [Bi, Bt, K] instead of [Bi, Bt, E].
    """
    keys = mixture @ kernels["key"]  # [Bi, K, E]
    tokens = mixture @ kernels["value"] @ kernels["out"]  # [Bi, K, E]: u_ik
    queries = text_emb @ kernels["query"]  # [Bt, E]
    attention = jax.nn.softmax(
        jnp.einsum("ike,je->ijk", keys, queries) / temperature, axis=-1)  # [Bi, Bt, K]
    token_text = jnp.einsum("ike,je->ijk", tokens, text_emb)  # [Bi, Bt, K]: u_ik . y_j
    gram = jnp.einsum("ike,ile->ikl", tokens, tokens)  # [Bi, K, K]
    dot = jnp.sum(attention * token_text, axis=-1)  # [Bi, Bt]: h_{i|j} . y_j
    squared_norm = jnp.einsum("ijk,ikl,ijl->ij", attention, gram, attention)
    # alpha^T G alpha >= 0 in exact arithmetic; the max guards rounding at |h| ~ 0.
    return dot / jnp.sqrt(jnp.maximum(squared_norm, 0.0) + _NORM_EPS)


def llip_logits(
    mixture: jax.Array,
    text_emb: jax.Array,
    kernels: dict[str, jax.Array],
    temperature: float,
    logit_scale: jax.Array,
    logit_bias: jax.Array | float = 0.0,
) -> jax.Array:
    """t * cos(h_{i|j}, y_j) + b: mixture [Bi, K, E], text_emb [Bt, E] -> logits [Bi, Bt].

    Pure in its arguments, so a sharded loss can call it on one chunk of texts at a time
    (the texts carry only their embeddings; the kernels are replicated).
    """
    cosine = conditioned_similarity(mixture, text_emb, kernels, temperature)  # [Bi, Bt]
    return logit_scale * cosine + logit_bias


class MixtureAttention(nn.Module):
    """The kernels W_q, W_k, W_v, W_o ([E, E], no bias) of the caption-conditioned attention."""

    embed_dim: int

    @nn.compact
    def __call__(self) -> dict[str, jax.Array]:
        init = layers.dense_init((None, "proj"))
        shape = (self.embed_dim, self.embed_dim)
        return {name: self.param(name, init, shape) for name in ATTENTION_KERNELS}


class Llip(nn.Module):
    """Returns `(mixture [B, K, E], text_emb [B, E], extras)`; text_emb is L2-normalised.

    `extras` holds "logit_scale", "logit_bias" (when `logit_bias_init` is set), "attention"
    (the kernels `llip_logits` takes) and the towers' tokens. Either input may be None.
    The image tower's pooled output is unused: pick a parameter-free pool ("gap").
    """

    image: dict[str, Any]
    text: dict[str, Any]
    embed_dim: int
    num_mixture_tokens: int
    temperature: float
    logit_scale_init: float
    logit_bias_init: float | None = None
    max_logit_scale: float = float("inf")
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        if self.num_mixture_tokens < 1:
            raise ValueError(f"Llip needs num_mixture_tokens >= 1, got {self.num_mixture_tokens}")
        self.image_tower = ViT(
            **self.image, num_extra_tokens=self.num_mixture_tokens, dtype=self.dtype)
        self.text_tower = two_tower.build_text_tower(self.text, self.dtype)
        self.image_proj = two_tower.projection(self.embed_dim, self.dtype)
        self.text_proj = two_tower.projection(self.embed_dim, self.dtype)
        self.mixture_attention = MixtureAttention(self.embed_dim)
        two_tower.add_logit_params(self)

    def encode_image(self, images: jax.Array):
        """The mixture [B, K, E] (not normalised: only h_{i|j} is), and the tower's extras."""
        _, extras = self.image_tower(images)
        return self.image_proj(extras["extra_tokens"]).astype(jnp.float32), extras

    def encode_text(self, text_tokens: jax.Array):
        pooled, extras = self.text_tower(text_tokens)
        return l2_normalize(self.text_proj(pooled).astype(jnp.float32)), extras

    def similarity(self, mixture: jax.Array, text_emb: jax.Array) -> jax.Array:
        """cos(h_{i|j}, y_j) [Bi, Bt] of encoded images and texts (what the evals rank by)."""
        return conditioned_similarity(
            mixture, text_emb, self.mixture_attention(), self.temperature)

    def __call__(self, images: jax.Array | None, text_tokens: jax.Array | None):
        extras = {**two_tower.logit_extras(self), "attention": self.mixture_attention()}
        return two_tower.encode_pairs(self, images, text_tokens, extras)  # mixture, text_emb


def from_config(model_config: ml_collections.ConfigDict, vocab_size: int,
                dtype=jnp.float32) -> Llip:
    """`model.name = "llip"`."""
    return two_tower.tower_pair_from_config(Llip, model_config, vocab_size, dtype)
