"""Hugging Face `FlavaForPreTraining` weights -> our `models.flava.Flava` params.

Where the layouts differ: HF's [CLS_T] is the tokenizer's [CLS] id at position 0 and every
token also gets `token_type_embeddings[0]`; ours is a learned vector, so the converter folds
that row into every token embedding and sets our [CLS_T] to word_embeddings[cls_id] + type 0.
The image codebook (DALL-E) is not converted: our MIM targets come from `mim_targets`.
"""

from __future__ import annotations

import numpy as np

from vlm_jax.convert.torch_layout import (
    Weights,
    activation,
    attention,
    dense,
    layer_norm,
    mlp,
    patch_embedding,
)


def _flava_encoder(weights: Weights, prefix: str, num_heads: int) -> dict:
    """Our layers.Encoder blocks from HF's `prefix.layer.{i}` (FlavaLayer: pre-norm)."""
    encoder = {}
    for i in range(weights.count(prefix + ".layer.{}.")):
        layer = f"{prefix}.layer.{i}"
        encoder[f"block{i}"] = {
            "norm1": layer_norm(weights, f"{layer}.layernorm_before"),
            "attn": attention(weights, (f"{layer}.attention.attention.query",
                                        f"{layer}.attention.attention.key",
                                        f"{layer}.attention.attention.value",
                                        f"{layer}.attention.output.dense"), num_heads),
            "norm2": layer_norm(weights, f"{layer}.layernorm_after"),
            "mlp": mlp(weights, f"{layer}.intermediate.dense", f"{layer}.output.dense"),
        }
    return encoder


def _head(weights: Weights, name: str) -> dict:
    return {"transform": dense(weights, f"{name}.transform.dense"),
            "norm": layer_norm(weights, f"{name}.transform.LayerNorm"),
            "decoder": dense(weights, f"{name}.decoder")}


def convert(config: dict, weights: Weights, cls_id: int) -> tuple[dict, dict]:
    """(params, model fields) of our Flava from a FlavaForPreTraining state dict and its config
    dict (`FlavaConfig.to_dict()`); `cls_id` is the text [CLS] id HF puts at position 0."""
    image_cfg, text_cfg, mm_cfg = (config["image_config"], config["text_config"],
                                   config["multimodal_config"])
    image, text, mm = "flava.image_model", "flava.text_model", "flava.multimodal_model"
    patches = f"{image}.embeddings.patch_embeddings"
    type0 = weights.take(f"{text}.embeddings.token_type_embeddings.weight")[0]
    words = weights.take(f"{text}.embeddings.word_embeddings.weight") + type0
    params = {
        "image_encoder": {
            "embedding": patch_embedding(weights, f"{patches}.projection"),
            "cls": weights.take(f"{image}.embeddings.cls_token"),
            "mask_token": weights.take(f"{image}.embeddings.mask_token"),
            "pos_embedding": weights.take(f"{image}.embeddings.position_embeddings"),
            "encoder": _flava_encoder(weights, f"{image}.encoder",
                                      image_cfg["num_attention_heads"]),
            "norm": layer_norm(weights, f"{image}.layernorm"),
        },
        "text_encoder": {
            "token_embedding": {"embedding": words},
            "cls": words[cls_id][None, None],
            "pos_embedding": weights.take(f"{text}.embeddings.position_embeddings.weight"),
            "embedding_norm": layer_norm(weights, f"{text}.embeddings.LayerNorm"),
            "encoder": _flava_encoder(weights, f"{text}.encoder",
                                      text_cfg["num_attention_heads"]),
            "norm": layer_norm(weights, f"{text}.layernorm"),
        },
        "image_to_mm": dense(weights, "flava.image_to_mm_projection"),
        "text_to_mm": dense(weights, "flava.text_to_mm_projection"),
        "mm_cls": weights.take(f"{mm}.cls_token"),
        "mm_encoder": {**_flava_encoder(weights, f"{mm}.encoder", mm_cfg["num_attention_heads"]),
                       "norm": layer_norm(weights, f"{mm}.layernorm")},
        "image_projection": dense(weights, "flava.image_projection"),
        "text_projection": dense(weights, "flava.text_projection"),
        "logit_scale": np.asarray(weights.take("flava.logit_scale"), np.float32).reshape(()),
        "mim_head": _head(weights, "mim_head"),
        "mlm_head": _head(weights, "mlm_head"),
        "mmm_image_head": _head(weights, "mmm_image_head"),
        "mmm_text_head": _head(weights, "mmm_text_head"),
        "itm_pooler": dense(weights, "itm_head.pooler.dense"),
        "itm_classifier": dense(weights, "itm_head.seq_relationship"),
    }
    for name in ("image", "text", "multimodal"):
        cfg = config[f"{name}_config"]
        if cfg["layer_norm_eps"] != image_cfg["layer_norm_eps"] or (
                cfg["hidden_act"] != image_cfg["hidden_act"]):
            raise ValueError("our Flava uses one ln_eps and one activation; this checkpoint's "
                             f"{name}_config differs from its image_config")

    def tower(cfg, **extra):
        return dict(width=cfg["hidden_size"], depth=cfg["num_hidden_layers"],
                    num_heads=cfg["num_attention_heads"], mlp_dim=cfg["intermediate_size"],
                    **extra)

    fields = dict(
        vocab_size=text_cfg["vocab_size"], pad_id=text_cfg["pad_token_id"],
        image=tower(image_cfg, patch_size=image_cfg["patch_size"]),
        text=tower(text_cfg, max_len=text_cfg["max_position_embeddings"]),
        multimodal=tower(mm_cfg), embed_dim=config["projection_dim"],
        mim_dim=image_cfg["vocab_size"], ln_eps=image_cfg["layer_norm_eps"],
        activation=activation(image_cfg["hidden_act"]))
    return params, fields
