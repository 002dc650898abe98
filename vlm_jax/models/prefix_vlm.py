"""VLMs built on a pretrained LM: image features become token embeddings of the LM's sequence.

    images ─ ViT (image_tower) ─┬─ "prefix" (Frozen):  pooled [B, D_v] ─ Dense ─ n embeddings
                                ├─ "patches" (LLaVA):  hidden_states[feature_layer] patch
                                │                      tokens [B, N, D_v] ─ projector
                                └─ "qformer" (BLIP-2 stage 2, MiniGPT-4): final tokens
                                   [B, S, D_v] ─ Q-Former's Q queries [B, Q, D_q] ─ projector
           ─ image embeddings [B, N, D] ─┐
    tokens [B, T] ─ lm.embed ────────────┴─ merge: the k-th placeholder (image_token_id) of a
           row takes the row's k-th image embedding ─ lm (causal) ─ logits [B, T, V]

Frozen (Tsimpoukelli et al., 2021): a trained vision encoder and a linear map to n prefix
embeddings (our default n = 2), the LM frozen. LLaVA (Liu et al., 2023): CLIP-style features
below the last block, CLS dropped, through a linear projector (LLaVA) or Linear-GELU-Linear
(LLaVA-1.5), placed where the chat template's image placeholders stand. Both attend causally
over the whole sequence (neither uses a prefix-LM mask). BLIP-2 stage 2 (Li et al., 2023) and
MiniGPT-4 (Zhu et al., 2023): the stage-1 Q-Former (vlm_jax/models/qformer.py, queries only,
its parameter names kept so a BLIP-2 stage-1 workdir loads into `image_tower` and `qformer`)
reads the image tower's final tokens, and one linear layer (`projector`, BLIP-2's
language_projection) maps its Q query outputs to Q soft-prompt embeddings. What trains is the
config's `optim.param_rules`, not the model's concern.

The placeholder may lie outside the LM's vocabulary (an added special of a pretrained LM's
tokenizer): placeholders are never embedded by the LM, only replaced, and never predicted.
Decoding runs one token at a time against the LM's KV cache (`init_cache`, `decode_step`), a
placeholder input taking the next image embedding, so prompts with the image inside them (the
chat template's user turn) decode like training sequences.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import layers, sizes
from vlm_jax.models import lm as lm_module
from vlm_jax.models.qformer import QFormer
from vlm_jax.models.vit import ViT

CONNECTORS = ("prefix", "patches", "qformer")
PROJECTORS = ("linear", "mlp")


class Projector(nn.Module):
    """Image features [B, N, C] -> [B, N, width]: one Dense ("linear") or Dense-GELU-Dense
    ("mlp"; HF LLaVA's `linear_1`, `act`, `linear_2`)."""

    width: int
    kind: str = "linear"
    activation: str = "gelu_exact"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        dense = lambda name: nn.Dense(self.width, dtype=self.dtype, name=name,
                                      kernel_init=layers.dense_init((None, "embed")),
                                      bias_init=layers.zeros_init(("embed",)))
        if self.kind == "linear":
            return dense("linear")(features)
        if self.kind == "mlp":
            hidden = layers.ACTIVATIONS[self.activation](dense("linear_1")(features))
            return dense("linear_2")(hidden)
        raise ValueError(f"projector {self.kind!r} must be one of {PROJECTORS}")


class PrefixVLM(nn.Module):
    """`__call__(images [B, S, S, 3], tokens [B, T])` -> logits [B, T, V_lm] (position t
    predicts token t + 1). Every row of `tokens` holds exactly `num_image_tokens(S)`
    placeholders (`image_token_id`), in the order the image embeddings fill them.

    `image`: ViT kwargs (its own pool; "patches" reads `feature_layer` instead). `language`:
    the LM's kwargs (vlm_jax.models.lm.LM fields, vocab_size included). `connector` "prefix":
    `num_prefix_tokens` embeddings from the pooled feature (Frozen); "patches": one per patch;
    "qformer": one per query of the Q-Former, whose fields (sizes, num_queries, ...) are
    `qformer_sizes`, through a linear `projector`. `qformer_reads_cls`: the Q-Former reads
    the tower's CLS output before its patch tokens (a "cls"-pooled tower: HF/LAVIS BLIP-2's
    whole final-normed ViT sequence); False: the patch tokens only, as stage 1 here
    (models/blip2.py) reads them.
    """

    image: dict[str, Any]
    language: dict[str, Any]
    image_token_id: int
    connector: str = "patches"
    qformer_sizes: dict[str, Any] | None = None  # the QFormer's fields (model.qformer)
    qformer_reads_cls: bool = False
    projector: str = "linear"
    projector_activation: str = "gelu_exact"  # HF LLaVA's "gelu" is the erf form
    num_prefix_tokens: int = 2
    feature_layer: int = -2
    bos_id: int = 2
    pad_id: int = 0
    execution: layers.Execution = layers.Execution()
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        if self.connector not in CONNECTORS:
            raise ValueError(f"model.connector {self.connector!r} must be one of {CONNECTORS}")
        if self.connector == "qformer" and not self.qformer_sizes:
            raise ValueError('model.connector "qformer" needs a model.qformer section (the '
                             "Q-Former's sizes and num_queries, as BLIP-2 stage 1's)")
        if self.qformer_reads_cls and self.image.get("pool") != "cls":
            raise ValueError("model.qformer_reads_cls needs a CLS token: set model.image.pool "
                             f"to 'cls' (it is {self.image.get('pool', 'map')!r}) or drop it")
        feature_layer = self.feature_layer if self.connector == "patches" else None
        self.image_tower = ViT(**{"execution": self.execution, **self.image},
                               feature_layer=feature_layer, dtype=self.dtype)
        self.lm = lm_module.LM(**{"execution": self.execution, **self.language},
                               dtype=self.dtype)
        width = self.language["width"]
        if self.connector == "prefix":
            self.prefix = nn.Dense(self.num_prefix_tokens * width, dtype=self.dtype,
                                   kernel_init=layers.dense_init((None, "embed")),
                                   bias_init=layers.zeros_init(("embed",)), name="prefix")
        elif self.connector == "qformer":
            # Queries only (no word table): the stage-1 names, so its workdir loads as is.
            self.qformer = QFormer(**{"execution": self.execution, **self.qformer_sizes},
                                   text=False, dtype=self.dtype, name="qformer")
            self.projection = Projector(width, "linear", dtype=self.dtype, name="projector")
        else:
            self.projection = Projector(width, self.projector, self.projector_activation,
                                        self.dtype, name="projector")

    def num_image_tokens(self, image_size: int) -> int:
        """Placeholders per image at this image size."""
        if self.connector == "prefix":
            return self.num_prefix_tokens
        if self.connector == "qformer":
            return self.qformer_sizes["num_queries"]
        return (image_size // self.image["patch_size"]) ** 2

    def image_embeddings(self, images: jax.Array) -> jax.Array:
        """images [B, S, S, 3] -> the LM-width embeddings that fill the placeholders [B, N, D];
        several per row [B, M, S, S, 3] (an interleaved few-shot prompt) -> [B, M * N, D],
        image m's embeddings filling the m-th group of placeholders."""
        if images.ndim == 5:
            batch, count = images.shape[:2]
            flat = self.image_embeddings(images.reshape(batch * count, *images.shape[2:]))
            return flat.reshape(batch, count * flat.shape[1], flat.shape[2])
        if self.connector == "qformer":
            return self.projection(self.query_outputs(images))  # [B, Q, D]
        pooled, extras = self.image_tower(images)
        if self.connector == "prefix":
            prefix = self.prefix(pooled)  # [B, n * D]
            return prefix.reshape(pooled.shape[0], self.num_prefix_tokens, -1)
        return self.projection(extras["feature_tokens"])

    def query_outputs(self, images: jax.Array) -> jax.Array:
        """images [B, S, S, 3] -> the Q-Former's query outputs [B, Q, D_q] over the image
        tower's final-normed tokens [B, N(+1), D_v] (BLIP-2 stage 1's `image_features`; CLS
        first when `qformer_reads_cls`), before the projector."""
        pooled, extras = self.image_tower(images)
        tokens = extras["tokens"]
        if self.qformer_reads_cls:  # pool "cls": `pooled` is the CLS token's final output
            tokens = jnp.concatenate([pooled[:, None].astype(tokens.dtype), tokens], axis=1)
        return self.qformer(tokens, None)

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """LM embeddings [B, T, D] of tokens; placeholders (maybe outside the LM's vocabulary)
        are embedded as token 0, to be replaced."""
        return self.lm.embed(jnp.where(tokens == self.image_token_id, 0, tokens))

    def merge(self, tokens: jax.Array, image_embeddings: jax.Array) -> jax.Array:
        """Token embeddings [B, T, D] with the k-th placeholder of row b replaced by
        image_embeddings[b, k] (MaxText's merge_mm_embeddings)."""
        is_image = tokens == self.image_token_id
        index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, image_embeddings.shape[1] - 1)
        gathered = jnp.take_along_axis(image_embeddings, index[..., None], axis=1)
        text = self.embed_tokens(tokens)
        return jnp.where(is_image[..., None], gathered.astype(text.dtype), text)

    def __call__(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
        """images [B, (M,) S, S, 3], tokens [B, T] -> logits [B, T, V]."""
        embeddings = self.merge(tokens, self.image_embeddings(images))
        return self.lm(embeddings=embeddings)

    def init_cache(self, image_embeddings: jax.Array, max_len: int) -> dict:
        """The decoding state: the LM's empty KV cache for `max_len` positions, the images'
        embeddings [B, N, D] and how many of them each row has consumed."""
        batch_size = image_embeddings.shape[0]
        return {"lm": self.lm.init_cache(batch_size, max_len), "images": image_embeddings,
                "images_used": jnp.zeros((batch_size,), jnp.int32)}

    def decode_step(self, cache: dict, token: jax.Array, position: jax.Array):
        """Input token [B] at `position` -> (logits [B, V] for the next token, cache); a
        placeholder input takes the row's next image embedding."""
        is_image = token == self.image_token_id
        images = cache["images"]
        index = jnp.minimum(cache["images_used"], images.shape[1] - 1)
        image = jnp.take_along_axis(images, index[:, None, None], axis=1)  # [B, 1, D]
        text = self.embed_tokens(token[:, None])
        embedding = jnp.where(is_image[:, None, None], image.astype(text.dtype), text)
        logits, lm_cache = self.lm.decode(embedding, cache["lm"], position)
        cache = {**cache, "lm": lm_cache, "images_used": cache["images_used"] + is_image}
        return logits[:, 0], cache


def from_config(model_config: ml_collections.ConfigDict, vocab_size: int,
                dtype=jnp.float32) -> PrefixVLM:
    """`model.name = "prefix_vlm"`: `model.lm.vocab_size` 0 takes the tokenizer's; set it to
    a pretrained LM's own size when the tokenizer adds the placeholder after it.
    `model.qformer` (connector "qformer"): the Q-Former's section, as configs/blip2.py's."""
    language = dict(model_config.lm.to_dict())
    language["vocab_size"] = language.get("vocab_size") or vocab_size
    qformer = None
    if "qformer" in model_config:  # no word table: vocab_size 0 builds nothing
        qformer = sizes.sequence_kwargs(model_config.qformer, vocab_size=0)
    return PrefixVLM(
        image=sizes.tower_kwargs(model_config.image), language=language, qformer_sizes=qformer,
        execution=layers.Execution(**model_config.get("execution", {})),
        **sizes.model_fields(PrefixVLM, model_config, ("image", "lm", "qformer")), dtype=dtype)
