"""MaskVLM (Kwon et al., 2023): masked vision and language modelling, each modality rebuilt
from the *unmasked* other one, on raw pixels and raw tokens (no image tokenizer).

    images ─ ViT (CLS) ─ image tokens ─┬─ CLS ─ image_proj ─ image_emb ─┐ ITC
    text ─ bidirectional text tower ─ text tokens ─┬─ EOS ─ text_proj ─ text_emb ─┘
    image cross-modality encoder: image tokens attend to themselves, then to the text tokens
    text cross-modality encoder:  text tokens attend to themselves, then to the image tokens
      MIM: masked image | clean text ─ image cross ─ pixel decoder ─ patch pixels
      MLM: masked text | clean image ─ text cross ─ token head ─ vocabulary logits
      ITM: clean image, clean text ─ both cross encoders ─ [image CLS; text EOS] ─ 2-way head

Raw-pixel masking sets a masked patch's pixels to 0 (mid-grey in [-1, 1]) before the ViT, so
every masked patch embeds as the same learned vector plus its position: the encoder knows which
patches are gone without a change to the ViT. The ITM head reading both cross encoders' first
states, the pixel decoder's depth and one cross-encoder size for both are our choices (the
primary text was not checked). Each cross-modality layer is a self-attention `layers.Block`
followed by a cross-attention one (`cross_attention=True`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import layers, sizes, two_tower
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.two_tower import l2_normalize
from vlm_jax.models.vit import ViT


def mask_patches(images: jax.Array, patch_mask: jax.Array, patch: int) -> jax.Array:
    """float [-1, 1] images [B, S, S, 3] with the patches where patch_mask [B, N] (row-major,
    ViT order) is True set to 0: raw-pixel masking."""
    pixels = images.astype(jnp.float32) / 127.5 - 1.0 if jnp.issubdtype(
        images.dtype, jnp.integer) else images.astype(jnp.float32)
    b, s = pixels.shape[:2]
    grid = s // patch
    keep = ~patch_mask.reshape(b, grid, 1, grid, 1, 1)
    blocks = pixels.reshape(b, grid, patch, grid, patch, pixels.shape[-1])
    return jnp.where(keep, blocks, 0.0).reshape(pixels.shape)


class CrossModalityEncoder(nn.Module):
    """`depth` layers of (self-attention block, cross-attention block to the other modality),
    then a final norm. x [B, L, D], context [B, S, C] -> [B, L, D]."""

    depth: int
    num_heads: int
    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"
    execution: layers.Execution = layers.Execution()

    @nn.compact
    def __call__(self, x, context, x_valid=None, context_valid=None):
        run = self.execution
        block = run.remat_block(layers.Block)
        settings = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, width=x.shape[-1],
                        dtype=self.dtype, ln_eps=self.ln_eps, activation=self.activation,
                        implementation=run.implementation)
        self_mask = None if x_valid is None else x_valid[:, None, None, :]
        cross_mask = None if context_valid is None else context_valid[:, None, None, :]
        for i in range(self.depth):
            x = block(**settings, name=f"self{i}")(x, self_mask)
            cross = block(**settings, cross_attention=True, name=f"cross{i}")
            x = cross(x, cross_mask, None, cross.context_keys_values(context))
        return layers.LayerNorm(self.dtype, self.ln_eps, name="norm")(x)


class MaskVLM(nn.Module):
    """`__call__(images, text_tokens)` runs every part once on clean inputs (to build the
    params) and returns (image_emb, text_emb, extras) like `TwoTower`; training and serving
    call the parts: `encode_image`, `encode_text`, `reconstruct_image`, `predict_tokens`,
    `itm_logits`, `match`.

    `image`: ViT kwargs (pool "cls": its CLS feeds ITC and the ITM head). `text`: the
    bidirectional text tower (pooled at EOS). `cross`: both cross-modality encoders' depth,
    num_heads, mlp_dim (their widths are the towers'). `decoder_depth` blocks before the
    pixel head (0: a linear head on the cross-encoder states).
    """

    image: dict[str, Any]
    text: dict[str, Any]
    cross: dict[str, Any]
    embed_dim: int
    vocab_size: int
    decoder_depth: int = 1
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None
    max_logit_scale: float = 100.0
    pad_id: int = 0
    execution: layers.Execution = layers.Execution()
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        if self.image.get("pool") != "cls":
            raise ValueError("MaskVLM reads the ViT's CLS token (ITC, ITM): set the image "
                             "tower's pool to 'cls'")
        if self.text.get("causal", True):
            raise ValueError("MaskVLM's text encoder is bidirectional (MLM sees both sides of "
                             "a masked token): set the text tower's causal to False")
        self.patch = self.image["patch_size"]
        self.image_tower = ViT(**{"execution": self.execution, **self.image}, dtype=self.dtype)
        self.text_tower = TextTransformer(
            **{"execution": self.execution, **self.text}, vocab_size=self.vocab_size,
            pad_id=self.pad_id, dtype=self.dtype)
        self.image_proj = two_tower.projection(self.embed_dim, self.dtype)
        self.text_proj = two_tower.projection(self.embed_dim, self.dtype)
        two_tower.add_logit_params(self)
        cross = dict(**self.cross, dtype=self.dtype, execution=self.execution)
        self.image_cross = CrossModalityEncoder(**cross)
        self.text_cross = CrossModalityEncoder(**cross)
        self.pixel_decoder = layers.Encoder(
            self.decoder_depth, self.cross["num_heads"], self.cross["mlp_dim"], self.dtype,
            execution=self.execution) if self.decoder_depth else None
        self.pixel_head = nn.Dense(self.patch * self.patch * 3, dtype=self.dtype,
                                   kernel_init=layers.dense_init(("embed", None)))
        self.token_head = nn.Dense(self.vocab_size, dtype=self.dtype,
                                   kernel_init=layers.dense_init(("embed", "vocab")))
        self.itm_head = nn.Dense(2, dtype=self.dtype, kernel_init=layers.dense_init(
            ("embed", None)))

    def encode_image(self, images: jax.Array):
        """images uint8 or float [-1, 1] [B, S, S, 3] -> (image_emb [B, E],
        {"tokens": [B, 1 + N, D], CLS first})."""
        cls, extras = self.image_tower(images)
        tokens = jnp.concatenate([cls[:, None].astype(extras["tokens"].dtype),
                                  extras["tokens"]], axis=1)
        return l2_normalize(self.image_proj(cls).astype(jnp.float32)), {"tokens": tokens}

    def encode_text(self, text_tokens: jax.Array):
        """text_tokens [B, L] -> (text_emb [B, E], {"tokens": [B, L, D], "text_mask"})."""
        pooled, extras = self.text_tower(text_tokens)
        return l2_normalize(self.text_proj(pooled).astype(jnp.float32)), extras

    def reconstruct_image(self, masked_image_tokens: jax.Array, text_tokens_out: jax.Array,
                          text_mask: jax.Array) -> jax.Array:
        """Patch pixels [B, N, p*p*3] in [-1, 1] units from the masked image's tokens (CLS
        first) attending to the clean text's tokens."""
        x = self.image_cross(masked_image_tokens, text_tokens_out, context_valid=text_mask)
        x = x[:, 1:]  # the patches, without CLS
        if self.pixel_decoder is not None:
            x = self.pixel_decoder(x)
        return self.pixel_head(x).astype(jnp.float32)

    def predict_tokens(self, masked_text_tokens_out: jax.Array, text_mask: jax.Array,
                       image_tokens_out: jax.Array) -> jax.Array:
        """Vocabulary logits [B, L, V] from the masked text's tokens attending to the clean
        image's tokens."""
        x = self.text_cross(masked_text_tokens_out, image_tokens_out, x_valid=text_mask)
        return self.token_head(x).astype(jnp.float32)

    def itm_logits(self, image_tokens_out: jax.Array, text_tokens_out: jax.Array,
                   text_mask: jax.Array) -> jax.Array:
        """2-way logits [B, 2] (index 1: match) of aligned rows, from both cross encoders."""
        image_side = self.image_cross(image_tokens_out, text_tokens_out,
                                      context_valid=text_mask)[:, 0]  # the CLS
        text_side = self.text_cross(text_tokens_out, image_tokens_out, x_valid=text_mask)
        last = jnp.maximum(text_mask.sum(axis=1) - 1, 0)  # EOS, as the text tower pools
        text_side = jnp.take_along_axis(text_side, last[:, None, None], axis=1)[:, 0]
        both = jnp.concatenate([image_side, text_side.astype(image_side.dtype)], axis=-1)
        return self.itm_head(both).astype(jnp.float32)

    def match(self, images: jax.Array, text_tokens: jax.Array) -> jax.Array:
        """The ITM logit [B], log p(match) / p(no match), of image i with text i."""
        _, image_extras = self.encode_image(images)
        _, text_extras = self.encode_text(text_tokens)
        logits = self.itm_logits(image_extras["tokens"], text_extras["tokens"],
                                 text_extras["text_mask"])
        return logits[:, 1] - logits[:, 0]

    def __call__(self, images: jax.Array, text_tokens: jax.Array):
        image_emb, image_extras = self.encode_image(images)
        text_emb, text_extras = self.encode_text(text_tokens)
        image_tokens, text_states = image_extras["tokens"], text_extras["tokens"]
        text_mask = text_extras["text_mask"]
        extras = {
            **two_tower.logit_extras(self),
            "pixels": self.reconstruct_image(image_tokens, text_states, text_mask),
            "token_logits": self.predict_tokens(text_states, text_mask, image_tokens),
            "itm_logits": self.itm_logits(image_tokens, text_states, text_mask),
        }
        return image_emb, text_emb, extras


def from_config(model_config: ml_collections.ConfigDict, vocab_size: int,
                dtype=jnp.float32) -> MaskVLM:
    """`model.name = "maskvlm"`: `model.execution` reaches every encoder."""
    image = sizes.tower_kwargs(model_config.image)
    text = sizes.sequence_kwargs(model_config.text)
    if text["width"] != image["width"]:
        raise ValueError(f"MaskVLM's text width {text['width']} must equal the image width "
                         f"{image['width']}: the cross encoders and the ITM head join them")
    cross = dict(model_config.cross)
    return MaskVLM(
        image=image, text=text, cross=cross, vocab_size=vocab_size,
        execution=layers.Execution(**model_config.get("execution", {})),
        **sizes.model_fields(MaskVLM, model_config, ("image", "text", "cross")), dtype=dtype)
