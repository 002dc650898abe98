"""Hugging Face `LlavaForConditionalGeneration` (CLIP vision tower, projector, Llama) -> our
`prefix_vlm` with connector "patches" (models/prefix_vlm.py):

    image_tower/...   the CLIP vision tower, as hf_clip.image_tower converts it (pool "cls",
                      pre_norm, quick_gelu); LLaVA reads hidden_states[vision_feature_layer]
                      with CLS dropped ("default"), our ViT's `feature_layer`
    projector/linear_1, projector/linear_2   multi_modal_projector (Dense-act-Dense)
    lm/...            the Llama decoder, as hf_llama converts it

Checkpoints name the parts "vision_tower.[vision_model.]*", "multi_modal_projector.*",
"language_model.model.*" + "language_model.lm_head.*" (files written by save_pretrained, old
and new), or "model.vision_tower.*", "model.multi_modal_projector.*", "model.language_model.*"
+ "lm_head.*" (transformers 5's module names); both are read.

The model config keeps HF's `image_token_index` as `image_token_id` (inside the LM's
vocabulary in llava-hf checkpoints; its embedding row is never read). A vlm_jax tokenizer that
appends its placeholder after the vocabulary sets `model.image_token_id` to that id instead:
the logits are the same, since placeholders are replaced, never embedded.
"""

from __future__ import annotations

from vlm_jax.convert import hf_clip, hf_llama
from vlm_jax.convert import torch_layout as tl
from vlm_jax.convert.torch_layout import Weights

DEFAULTS = dict(image_token_index=32000, projector_hidden_act="gelu",
                vision_feature_select_strategy="default", vision_feature_layer=-2,
                multimodal_projector_bias=True, tie_word_embeddings=False)
VISION_PREFIXES = ("model.vision_tower.vision_model.", "vision_tower.vision_model.",
                   "model.vision_tower.", "vision_tower.")
PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")
# (checkpoint prefix, the name hf_llama reads), first match wins.
LM_PREFIXES = (("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."),
               ("model.language_model.", "model."), ("language_model.model.", "model."),
               ("language_model.", "model."))


def _rename(prefixes, name: str) -> str | None:
    for old, new in prefixes:
        if name.startswith(old):
            return new + name[len(old):]
    return None


def _check(config: dict, source: str) -> None:
    """The LLaVA options prefix_vlm computes; anything else is one clear error."""
    vision_type = config.get("vision_config", {}).get("model_type", "clip_vision_model")
    text_type = config.get("text_config", {}).get("model_type", "llama")
    problems = []
    if vision_type != "clip_vision_model":
        problems.append(f"vision_config.model_type {vision_type!r} (only clip_vision_model)")
    if text_type != "llama":
        problems.append(f"text_config.model_type {text_type!r} (only llama)")
    if not isinstance(config["vision_feature_layer"], int):
        problems.append(f"vision_feature_layer {config['vision_feature_layer']!r} (one layer "
                        "index only, not a list of layers)")
    if config["vision_feature_select_strategy"] != "default":
        problems.append(f"vision_feature_select_strategy "
                        f"{config['vision_feature_select_strategy']!r} (only 'default', CLS "
                        "dropped)")
    if not config["multimodal_projector_bias"]:
        problems.append("multimodal_projector_bias false (the projector has biases)")
    if problems:
        raise ValueError(f"{source}: LLaVA checkpoint with {'; '.join(problems)}: not "
                         "supported by vlm_jax's prefix_vlm")


def convert(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(model config for models.build_model, params) of a LlavaForConditionalGeneration."""
    config = {**DEFAULTS, **config}
    _check(config, weights.source)
    vision = weights.renamed(lambda name: _rename(
        [(prefix, "vision_model.") for prefix in VISION_PREFIXES], name))
    projector = weights.renamed(lambda name: _rename(
        [(prefix, "") for prefix in PROJECTOR_PREFIXES], name))
    language = weights.renamed(lambda name: _rename(LM_PREFIXES, name))
    tower_params, image = hf_clip.image_tower(vision, config.get("vision_config", {}))
    text_config = dict(config.get("text_config", {}))
    # LlavaConfig forwards a tied text config's tie_word_embeddings to the top level.
    text_config["tie_word_embeddings"] = bool(
        text_config.get("tie_word_embeddings") or config["tie_word_embeddings"])
    lm, lm_params = hf_llama.convert(text_config, language)
    params = {
        "image_tower": tower_params,
        "projector": {name: tl.dense(projector, name) for name in ("linear_1", "linear_2")},
        **lm_params,
    }
    model = dict(
        name="prefix_vlm", connector="patches", projector="mlp",
        projector_activation=tl.activation(config["projector_hidden_act"]),
        feature_layer=config["vision_feature_layer"],
        image_token_id=config["image_token_index"],
        bos_id=text_config.get("bos_token_id", 1), pad_id=text_config.get("pad_token_id") or 0,
        image=image, **lm,
    )
    return model, params
