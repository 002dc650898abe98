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


def convert(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(model config for models.build_model, params) of a CLIPModel checkpoint."""
    text_config = {**TEXT_DEFAULTS, **config.get("text_config", {})}
    vision_config = {**VISION_DEFAULTS, **config.get("vision_config", {})}
    image_heads = vision_config["num_attention_heads"]

    positions = weights.take("vision_model.embeddings.position_embedding.weight")  # [N+1, D]
    image_tower = {
        "embedding": tl.patch_embedding(weights, "vision_model.embeddings.patch_embedding"),
        "cls": weights.take("vision_model.embeddings.class_embedding").reshape(1, 1, -1),
        "pos_embedding": positions[None],
        "pre_norm": tl.layer_norm(weights, "vision_model.pre_layrnorm"),
        # HF applies post_layernorm to the CLS output only; LayerNorm acts per token, so our
        # encoder's final norm over all tokens gives the same pooled value.
        "encoder": tl.pre_norm_encoder(weights, "vision_model.encoder",
                                       "vision_model.post_layernorm", image_heads),
    }
    text_tower, text = tl.hf_text_tower(weights, text_config, causal=True, pad_id=0)
    params = {
        "image_tower": image_tower,
        "text_tower": text_tower,
        "image_proj": tl.dense(weights, "visual_projection", bias=False),
        "text_proj": tl.dense(weights, "text_projection", bias=False),
        "logit_scale": weights.take("logit_scale").reshape(()),
    }
    width, kernel = image_tower["embedding"]["kernel"].shape[3], image_tower["embedding"]["kernel"]
    image = dict(
        variant="", width=width, depth=len(image_tower["encoder"]) - 1, num_heads=image_heads,
        mlp_dim=image_tower["encoder"]["block0"]["mlp"]["Dense_0"]["kernel"].shape[1],
        patch_size=kernel.shape[0], pool="cls", pre_norm=True,
        ln_eps=vision_config["layer_norm_eps"],
        activation=tl.activation(vision_config["hidden_act"]),
    )
    model = dict(
        name="two_tower", embed_dim=params["image_proj"]["kernel"].shape[1],
        logit_scale_init=float(params["logit_scale"]), logit_bias_init=None,
        max_logit_scale=100.0, proj_bias=False, image=image, text=text,
    )
    return model, params
