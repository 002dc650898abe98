"""FLAVA: an image encoder ([CLS_I] + patches), a text encoder ([CLS_T] + tokens) and a multimodal
encoder over both (projected) plus [CLS_M], with joint self-attention; heads for MIM, MLM, MMM
(image and text), ITM and the global contrastive loss (HF `FlavaForPreTraining`'s layout).

One forward pass (`__call__`) returns one dict (see `Flava.__call__`): the unmasked unimodal
pass (contrastive embeddings) and the masked pass (masked unimodal states -> MIM/MLM heads;
their fusion -> ITM and MMM heads). Reducing the unimodal encoders to depth 0 leaves their
embeddings only: the single-stream (VisualBERT-style) baseline of configs/visualbert.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import layers, sizes
from vlm_jax.models.vit import to_float_image


@dataclasses.dataclass(frozen=True)
class Shared:
    """The settings every FLAVA part computes with (a plain value, not a module)."""

    vocab_size: int
    pad_id: int
    ln_eps: float
    activation: str
    execution: layers.Execution
    dtype: Any


def _dense(features: int, dtype, name: str, names=("embed", "mlp")) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name, kernel_init=layers.dense_init(names),
                    bias_init=layers.zeros_init(names[-1:]))


def _encoder(tower: dict, model: Flava, final_norm: bool, name: str) -> layers.Encoder:
    return layers.Encoder(tower["depth"], tower["num_heads"], tower["mlp_dim"], model.dtype,
                          model.ln_eps, model.activation, model.execution,
                          final_norm=final_norm, name=name)


def _normalize(v: jax.Array) -> jax.Array:
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


class ImageEncoder(nn.Module):
    """Patches (masked ones replaced by a learned mask token) + [CLS_I] + positions -> blocks.
    Returns (states [B, 1+N, D] before the final norm, hidden [B, 1+N, D] after it)."""

    tower: dict[str, Any]
    model: Shared

    @nn.compact
    def __call__(self, images: jax.Array, patch_mask: jax.Array | None = None):
        width, p, dtype = self.tower["width"], self.tower["patch_size"], self.model.dtype
        x = to_float_image(images, dtype)
        x = nn.Conv(width, (p, p), strides=(p, p), padding="VALID", dtype=dtype,
                    kernel_init=layers.dense_init((None, None, None, "embed")),
                    bias_init=layers.zeros_init(("embed",)), name="embedding")(x)
        x = x.reshape(x.shape[0], -1, width)  # [B, N, D]
        mask_token = self.param("mask_token", layers.zeros_init((None, None, "embed")),
                                (1, 1, width))
        if patch_mask is not None:
            x = jnp.where(patch_mask[..., None], mask_token.astype(dtype), x)
        cls = self.param("cls", layers.zeros_init((None, None, "embed")), (1, 1, width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, width)).astype(dtype), x], 1)
        positions = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
            (1, x.shape[1], width))
        states = _encoder(self.tower, self.model, False, "encoder")(x + positions.astype(dtype))
        return states, layers.LayerNorm(dtype, self.model.ln_eps, name="norm")(states)


class TextEncoder(nn.Module):
    """[CLS_T] + token embeddings + positions -> LayerNorm (BERT's embedding norm) -> blocks,
    bidirectional over non-padding. Returns (states [B, 1+L, D], hidden [B, 1+L, D], valid
    [B, 1+L]); position 0 is [CLS_T], a learned vector (HF FLAVA: the tokenizer's [CLS] id)."""

    tower: dict[str, Any]
    model: Shared

    @nn.compact
    def __call__(self, text_tokens: jax.Array):
        width, dtype, model = self.tower["width"], self.model.dtype, self.model
        batch, length = text_tokens.shape
        if length + 1 > self.tower["max_len"]:
            raise ValueError(f"text length {length} + [CLS_T] exceeds the text tower's max_len "
                             f"{self.tower['max_len']}; raise model.text.max_len")
        x = nn.Embed(model.vocab_size, width, dtype=dtype, name="token_embedding",
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(0.02), ("vocab", "embed")))(text_tokens)
        cls = self.param("cls", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, None, "embed")), (1, 1, width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, width)).astype(dtype), x], 1)
        positions = self.param("pos_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, "embed")), (self.tower["max_len"], width))
        x = layers.LayerNorm(dtype, model.ln_eps, name="embedding_norm")(
            x + positions[:length + 1].astype(dtype))
        valid = jnp.concatenate([jnp.ones((batch, 1), bool), text_tokens != model.pad_id], 1)
        states = _encoder(self.tower, model, False, "encoder")(x, mask=valid[:, None, None, :])
        return states, layers.LayerNorm(dtype, model.ln_eps, name="norm")(states), valid


class MaskedHead(nn.Module):
    """BERT's prediction head: dense -> activation -> LayerNorm -> dense to `outputs`."""

    outputs: int
    model: Shared

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.model.dtype
        x = _dense(x.shape[-1], dtype, "transform", ("mlp", "embed"))(x)
        x = layers.LayerNorm(dtype, self.model.ln_eps, name="norm")(
            layers.ACTIVATIONS[self.model.activation](x))
        return _dense(self.outputs, dtype, "decoder", ("embed", "vocab"))(x)


class Flava(nn.Module):
    """See the module docstring. `mim_dim`: the MIM/MMM-image head's outputs (number of codes, or
    pixels per patch for the pixel target). `text["max_len"]` counts [CLS_T]."""

    vocab_size: int
    image: dict[str, Any]
    text: dict[str, Any]
    multimodal: dict[str, Any]
    embed_dim: int = 128
    mim_dim: int = 64
    pad_id: int = 0
    ln_eps: float = 1e-12  # HF FLAVA's
    activation: str = "gelu_exact"  # HF FLAVA's "gelu" is the erf form
    logit_scale_init: float = math.log(1 / 0.07)
    # HF clamps the learned log-scale into [0, ln 100] during training.
    log_scale_range: tuple[float, float] = (0.0, math.log(100.0))
    execution: layers.Execution = layers.Execution()
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        mm_width = self.multimodal["width"]
        shared = Shared(self.vocab_size, self.pad_id, self.ln_eps, self.activation,
                        self.execution, self.dtype)
        self.image_encoder = ImageEncoder(self.image, shared)
        self.text_encoder = TextEncoder(self.text, shared)
        self.image_to_mm = _dense(mm_width, self.dtype, "image_to_mm", ("mlp", "embed"))
        self.text_to_mm = _dense(mm_width, self.dtype, "text_to_mm", ("mlp", "embed"))
        self.mm_cls = self.param("mm_cls", layers.zeros_init((None, None, "embed")),
                                 (1, 1, mm_width))
        self.mm_encoder = _encoder(self.multimodal, shared, True, "mm_encoder")
        self.image_projection = _dense(self.embed_dim, self.dtype, "image_projection",
                                       ("embed", "proj"))
        self.text_projection = _dense(self.embed_dim, self.dtype, "text_projection",
                                      ("embed", "proj"))
        self.log_scale = self.param("logit_scale", nn.initializers.constant(
            self.logit_scale_init), ())
        self.mim_head = MaskedHead(self.mim_dim, shared)
        self.mlm_head = MaskedHead(self.vocab_size, shared)
        self.mmm_image_head = MaskedHead(self.mim_dim, shared)
        self.mmm_text_head = MaskedHead(self.vocab_size, shared)
        self.itm_pooler = _dense(mm_width, self.dtype, "itm_pooler", ("mlp", "embed"))
        self.itm_classifier = _dense(2, self.dtype, "itm_classifier", ("embed", None))

    def encode_image(self, images: jax.Array):
        """(L2-normalised contrastive embedding [B, E] of the unmasked [CLS_I], {})."""
        _, hidden = self.image_encoder(images)
        return _normalize(self.image_projection(hidden[:, 0])), {}

    def encode_text(self, text_tokens: jax.Array):
        """(L2-normalised contrastive embedding [B, E] of the unmasked [CLS_T], {})."""
        _, hidden, _ = self.text_encoder(text_tokens)
        return _normalize(self.text_projection(hidden[:, 0])), {}

    def fuse(self, image_states: jax.Array, text_states: jax.Array, text_valid: jax.Array):
        """[CLS_M] + image_to_mm(image states) + text_to_mm(text states) -> the multimodal
        hidden states [B, 1 + (1+N) + (1+L), Dm]; padded text is masked as keys."""
        x = jnp.concatenate([self.image_to_mm(image_states), self.text_to_mm(text_states)], 1)
        batch = x.shape[0]
        x = jnp.concatenate([jnp.broadcast_to(self.mm_cls, (batch, 1, x.shape[-1])).astype(
            x.dtype), x], 1)
        valid = jnp.concatenate([jnp.ones((batch, 1 + image_states.shape[1]), bool),
                                 text_valid], 1)
        return self.mm_encoder(x, mask=valid[:, None, None, :])

    def itm_logits(self, mm_hidden: jax.Array) -> jax.Array:
        """[B, 2] match logits from [CLS_M] (index 1: "matches")."""
        return self.itm_classifier(jnp.tanh(self.itm_pooler(mm_hidden[:, 0])))

    def match(self, images: jax.Array, text_tokens: jax.Array) -> jax.Array:
        """float [B]: the ITM log-odds that image b and text b match (no masking)."""
        image_states, _ = self.image_encoder(images)
        text_states, _, text_valid = self.text_encoder(text_tokens)
        logits = self.itm_logits(self.fuse(image_states, text_states, text_valid))
        return logits[:, 1] - logits[:, 0]

    def __call__(self, images: jax.Array, text_tokens: jax.Array,
                 patch_mask: jax.Array | None = None, masked_tokens: jax.Array | None = None):
        """images [B, S, S, 3], text_tokens int [B, L] (unmasked), patch_mask bool [B, N],
        masked_tokens int [B, L] (the masked pass's text: corrupted, ITM-swapped). Returns
        {image_emb, text_emb [B, E], logit_scale, image_hidden [B,1+N,Di], text_hidden
        [B,1+L,Dt] (unmasked), masked_image_hidden, masked_text_hidden, mm_hidden [B, 1+(1+N)+
        (1+L), Dm] (masked pass), mim_logits / mmm_image_logits [B, N, mim_dim], mlm_logits /
        mmm_text_logits [B, L, V], itm_logits [B, 2]}."""
        if patch_mask is None:
            patch_mask = jnp.zeros(images.shape[:1] + (self.num_patches(images.shape[1]),), bool)
        if masked_tokens is None:
            masked_tokens = text_tokens
        # The unmasked and masked passes run as one batch of 2B rows (one graph to compile).
        batch = images.shape[0]
        both_states, both_hidden = self.image_encoder(
            jnp.concatenate([images, images]),
            jnp.concatenate([jnp.zeros_like(patch_mask), patch_mask]))
        image_hidden, masked_image = both_hidden[:batch], both_hidden[batch:]
        image_states = both_states[batch:]
        both_states, both_hidden, both_valid = self.text_encoder(
            jnp.concatenate([text_tokens, masked_tokens]))
        text_hidden, masked_text = both_hidden[:batch], both_hidden[batch:]
        text_states, text_valid = both_states[batch:], both_valid[batch:]
        mm_hidden = self.fuse(image_states, text_states, text_valid)
        num_patches = patch_mask.shape[1]
        lo, hi = self.log_scale_range
        return {
            "image_emb": _normalize(self.image_projection(image_hidden[:, 0])),
            "text_emb": _normalize(self.text_projection(text_hidden[:, 0])),
            "logit_scale": jnp.exp(jnp.clip(self.log_scale, lo, hi)),
            "image_hidden": image_hidden, "text_hidden": text_hidden,
            "masked_image_hidden": masked_image, "masked_text_hidden": masked_text,
            "mm_hidden": mm_hidden,
            "mim_logits": self.mim_head(masked_image[:, 1:]),
            "mlm_logits": self.mlm_head(masked_text[:, 1:]),
            # The multimodal sequence is [CLS_M, CLS_I, patches, CLS_T, tokens].
            "mmm_image_logits": self.mmm_image_head(mm_hidden[:, 2:2 + num_patches]),
            "mmm_text_logits": self.mmm_text_head(mm_hidden[:, 3 + num_patches:]),
            "itm_logits": self.itm_logits(mm_hidden),
        }

    def num_patches(self, image_size: int) -> int:
        return (image_size // self.image["patch_size"]) ** 2


def _tower(tower: ml_collections.ConfigDict, kwargs_of) -> dict:
    """A unimodal tower's kwargs; depth 0 (embeddings only: the single-stream baseline) is
    kept, where `sizes` reads a zero size as "take it from the variant"."""
    if tower.get("depth", None) != 0 or tower.get("variant"):
        return kwargs_of(tower)
    return {**kwargs_of(ml_collections.ConfigDict({**tower.to_dict(), "depth": 1})), "depth": 0}


def from_config(model_config: ml_collections.ConfigDict, vocab_size: int,
                dtype=jnp.float32) -> Flava:
    """`model.name = "flava"`: towers image / text / multimodal; `model.execution` reaches all."""
    fields = sizes.model_fields(Flava, model_config, ("image", "text", "multimodal"))
    if "log_scale_range" in fields:
        fields["log_scale_range"] = tuple(fields["log_scale_range"])
    return Flava(vocab_size=vocab_size, image=_tower(model_config.image, sizes.tower_kwargs),
                 text=_tower(model_config.text, sizes.sequence_kwargs),
                 multimodal=sizes.sequence_kwargs(model_config.multimodal),
                 execution=layers.Execution(**model_config.get("execution", {})),
                 **fields, dtype=dtype)
