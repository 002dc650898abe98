"""Hugging Face `CLIPModel` -> our TwoTower (ViT with CLS + pre-norm, causal text, EOS pool).

HF CLIP pools the text at the first EOS (or, in configs with the legacy eos_token_id 2, at the
largest id, which is also EOS); ours pools the last non-padding token. They agree on ids
right-padded with 0 after EOS, which is what vlm_jax tokenizers produce. Images: float pixels
pass through unchanged, so feed them normalised as CLIP's processor does.
"""

from __future__ import annotations

from vlm_jax.convert import torch_layout as tl
from vlm_jax.convert.torch_layout import Weights

# HF defaults for the fields a config.json may leave out.
TEXT_DEFAULTS = dict(num_attention_heads=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
VISION_DEFAULTS = dict(num_attention_heads=12, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def image_tower(weights: Weights, vision_config: dict) -> tuple[dict, dict]:
    """A CLIP `vision_model` as our ViT: (its params, its `model.image` config)."""
    vision_config = {**VISION_DEFAULTS, **vision_config}
    heads = vision_config["num_attention_heads"]
    positions = weights.take("vision_model.embeddings.position_embedding.weight")  # [N+1, D]
    params = {
        "embedding": tl.patch_embedding(weights, "vision_model.embeddings.patch_embedding"),
        "cls": weights.take("vision_model.embeddings.class_embedding").reshape(1, 1, -1),
        "pos_embedding": positions[None],
        "pre_norm": tl.layer_norm(weights, "vision_model.pre_layrnorm"),
        # HF applies post_layernorm to the CLS output only; LayerNorm acts per token, so our
        # encoder's final norm over all tokens gives the same pooled value.
        "encoder": tl.pre_norm_encoder(weights, "vision_model.encoder",
                                       "vision_model.post_layernorm", heads),
    }
    kernel = params["embedding"]["kernel"]  # [patch, patch, 3, width]
    config = dict(
        variant="", width=kernel.shape[3], depth=len(params["encoder"]) - 1, num_heads=heads,
        mlp_dim=params["encoder"]["block0"]["mlp"]["Dense_0"]["kernel"].shape[1],
        patch_size=kernel.shape[0], pool="cls", pre_norm=True,
        ln_eps=vision_config["layer_norm_eps"],
        activation=tl.activation(vision_config["hidden_act"]),
    )
    return params, config


def text_tower(weights: Weights, text_config: dict) -> tuple[dict, dict]:
    """A CLIP `text_model` as our causal TextTransformer: (its params, its `model.text`)."""
    return tl.hf_text_tower(weights, {**TEXT_DEFAULTS, **text_config}, causal=True, pad_id=0)


def convert(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(model config for models.build_model, params) of a CLIPModel checkpoint."""
    image_params, image = image_tower(weights, config.get("vision_config", {}))
    text_params, text = text_tower(weights, config.get("text_config", {}))
    params = {
        "image_tower": image_params,
        "text_tower": text_params,
        "image_proj": tl.dense(weights, "visual_projection", bias=False),
        "text_proj": tl.dense(weights, "text_projection", bias=False),
        "logit_scale": weights.take("logit_scale").reshape(()),
    }
    model = dict(
        name="two_tower", embed_dim=params["image_proj"]["kernel"].shape[1],
        logit_scale_init=float(params["logit_scale"]), logit_bias_init=None,
        max_logit_scale=100.0, proj_bias=False, image=image, text=text,
    )
    return model, params


def convert_vision(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(`{"image": ...}`, `{"image_tower": ...[, "image_proj"]}`) of a CLIPVisionModel
    (`visual_projection` too, if the checkpoint is a CLIPVisionModelWithProjection)."""
    tower, image = image_tower(weights, config)
    params = {"image_tower": tower}
    if "visual_projection.weight" in weights:
        params["image_proj"] = tl.dense(weights, "visual_projection", bias=False)
    return {"image": image}, params


def convert_text(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(`{"text": ...}`, `{"text_tower": ...[, "text_proj"]}`) of a CLIPTextModel."""
    tower, text = text_tower(weights, config)
    params = {"text_tower": tower}
    if "text_projection.weight" in weights:
        params["text_proj"] = tl.dense(weights, "text_projection", bias=False)
    return {"text": text}, params
