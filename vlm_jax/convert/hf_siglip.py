"""Hugging Face `SiglipModel` -> our TwoTower (ViT with MAP head, bidirectional text).

SigLIP's text tower has no notion of padding: it attends to every position and pools the last
one (its tokenizer pads to max length with EOS). Our text tower does exactly that with no id
marked as padding (pad_id=-1). Its text head (a Dense with bias) becomes our text projection;
the image tower has no projection, so ours is the identity (exact in float32) and both
projections carry a bias (proj_bias=True). Images: uint8 pixels map to [-1, 1] as SigLIP's
processor does.
"""

from __future__ import annotations

import numpy as np

from vlm_jax.convert import torch_layout as tl
from vlm_jax.convert.torch_layout import Weights

TEXT_DEFAULTS = dict(num_attention_heads=12, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
VISION_DEFAULTS = dict(num_attention_heads=12, hidden_act="gelu_pytorch_tanh",
                       layer_norm_eps=1e-6, vision_use_head=True)


def _map_head(weights: Weights, prefix: str, num_heads: int) -> dict:
    """The MAP head: torch nn.MultiheadAttention keeps q, k, v stacked in in_proj_[weight|bias]."""
    in_weight = np.split(weights.take(f"{prefix}.attention.in_proj_weight"), 3)
    in_bias = np.split(weights.take(f"{prefix}.attention.in_proj_bias"), 3)
    query, key, value = ({"weight": w, "bias": b} for w, b in zip(in_weight, in_bias, strict=True))
    out = tl.linear(weights, f"{prefix}.attention.out_proj")
    return {
        "probe": weights.take(f"{prefix}.probe").reshape(1, -1),
        "attn": tl.attention_from_linears(query, key, value, out, num_heads),
        "norm": tl.layer_norm(weights, f"{prefix}.layernorm"),
        "mlp": tl.mlp(weights, f"{prefix}.mlp.fc1", f"{prefix}.mlp.fc2"),
    }


def image_tower(weights: Weights, vision_config: dict) -> tuple[dict, dict]:
    """A SigLIP `vision_model` (with its MAP head) as our ViT: (params, `model.image`)."""
    vision_config = {**VISION_DEFAULTS, **vision_config}
    if not vision_config["vision_use_head"]:
        raise ValueError("SigLIP checkpoints without the attention-pooling head "
                         "(vision_use_head=false) are not supported")
    heads = vision_config["num_attention_heads"]
    params = {
        "embedding": tl.patch_embedding(weights, "vision_model.embeddings.patch_embedding"),
        "pos_embedding": weights.take("vision_model.embeddings.position_embedding.weight")[None],
        "encoder": tl.pre_norm_encoder(weights, "vision_model.encoder",
                                       "vision_model.post_layernorm", heads),
        "map": _map_head(weights, "vision_model.head", heads),
    }
    config = dict(
        variant="", width=params["pos_embedding"].shape[2], depth=len(params["encoder"]) - 1,
        num_heads=heads,
        mlp_dim=params["encoder"]["block0"]["mlp"]["Dense_0"]["kernel"].shape[1],
        patch_size=params["embedding"]["kernel"].shape[0], pool="map", pre_norm=False,
        ln_eps=vision_config["layer_norm_eps"],
        activation=tl.activation(vision_config["hidden_act"]),
    )
    return params, config


def text_tower(weights: Weights, text_config: dict) -> tuple[dict, dict, dict]:
    """A SigLIP `text_model` as our bidirectional TextTransformer and its head:
    (tower params, text_proj params, `model.text`)."""
    tower, text = tl.hf_text_tower(weights, {**TEXT_DEFAULTS, **text_config}, causal=False,
                                   pad_id=-1)
    return tower, tl.dense(weights, "text_model.head"), text


def convert(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(model config for models.build_model, params) of a SiglipModel checkpoint."""
    image_params, image = image_tower(weights, config.get("vision_config", {}))
    text_params, text_proj, text = text_tower(weights, config.get("text_config", {}))
    width = image["width"]
    if text_proj["kernel"].shape[1] != width:
        raise ValueError(f"SigLIP text head outputs {text_proj['kernel'].shape[1]} features but "
                         f"the image tower's are {width}: not a SigLIP checkpoint we can import")
    params = {
        "image_tower": image_params,
        "text_tower": text_params,
        "image_proj": {"kernel": np.eye(width, dtype=np.float32),
                       "bias": np.zeros(width, np.float32)},
        "text_proj": text_proj,
        "logit_scale": weights.take("logit_scale").reshape(()),
        "logit_bias": weights.take("logit_bias").reshape(()),
    }
    model = dict(
        name="two_tower", embed_dim=width,
        logit_scale_init=float(params["logit_scale"]),
        logit_bias_init=float(params["logit_bias"]),
        max_logit_scale=float("inf"), proj_bias=True, image=image, text=text,
    )
    return model, params


def convert_vision(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(`{"image": ...}`, `{"image_tower": ...}`) of a SiglipVisionModel."""
    tower, image = image_tower(weights, config)
    return {"image": image}, {"image_tower": tower}


def convert_text(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(`{"text": ...}`, `{"text_tower": ..., "text_proj": ...}`) of a SiglipTextModel."""
    tower, text_proj, text = text_tower(weights, config)
    return {"text": text}, {"text_tower": tower, "text_proj": text_proj}
