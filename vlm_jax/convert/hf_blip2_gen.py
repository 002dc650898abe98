"""Hugging Face `Blip2ForConditionalGeneration` with a Llama LM (config.json model_type
"blip-2") -> our `prefix_vlm` with connector "qformer" (BLIP-2 stage 2, models/prefix_vlm.py):

    image_tower/...   vision_model: BLIP-2's ViT (CLS, learned positions, pre-norm blocks with
                      one fused `qkv` linear, post_layernorm over every token) as our ViT
                      (pool "cls", final norm); the Q-Former reads its whole final sequence,
                      CLS first (`qformer_reads_cls`), as HF passes last_hidden_state
    qformer/...       query_tokens + qformer.*, queries only (hf_blip2.convert_qformer with
                      text=False: QFormer(text=False))
    projector/linear  language_projection (Q-Former width -> LM width)
    lm/...            language_model.*, the Llama decoder as hf_llama converts it

The model config keeps HF's `image_token_index` as `image_token_id`: transformers 5 puts the
projected queries where input_ids hold that id (Blip2Processor writes num_query_tokens of them
before BOS), which is exactly how prefix_vlm merges placeholders. An older config.json
without image_token_index (its transformers prepended the queries to the embeddings) is refused;
set image_token_index there to the tokenizer's image token and write the placeholders first.
"""

from __future__ import annotations

import numpy as np

from vlm_jax.convert import hf_blip2, hf_llama
from vlm_jax.convert import torch_layout as tl
from vlm_jax.convert.torch_layout import Weights

# Blip2VisionConfig's defaults for the fields a config.json may leave out.
VISION_DEFAULTS = dict(num_attention_heads=16, hidden_act="gelu", layer_norm_eps=1e-6,
                       qkv_bias=True)
QFORMER_DEFAULTS = dict(num_attention_heads=12, cross_attention_frequency=2,
                        intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12,
                        max_position_embeddings=512, pad_token_id=0)
# (checkpoint prefix, the name hf_llama reads): the LM is a LlamaForCausalLM held whole.
LM_PREFIXES = (("language_model.lm_head.", "lm_head."), ("language_model.model.", "model."))


def _fused_attention(weights: Weights, prefix: str, num_heads: int, qkv_bias: bool) -> dict:
    """`prefix.qkv` ([3D, D], output rows q | k | v) + `prefix.projection` -> our Attention.
    The bias is `qkv.bias` [3D] (what save_pretrained writes) or, in files that keep them
    apart, q_bias and v_bias with a zero key bias (BLIP-2's EVA ViT has no key bias)."""
    qkv = weights.take(f"{prefix}.qkv.weight")
    width = qkv.shape[1]
    if f"{prefix}.qkv.bias" in weights:
        bias = weights.take(f"{prefix}.qkv.bias")
    elif qkv_bias:
        q_bias, v_bias = weights.take(f"{prefix}.q_bias"), weights.take(f"{prefix}.v_bias")
        bias = np.concatenate([q_bias, np.zeros_like(q_bias), v_bias])
    else:
        bias = np.zeros(3 * width, qkv.dtype)
    query, key, value = ({"weight": qkv[i * width:(i + 1) * width],
                          "bias": bias[i * width:(i + 1) * width]} for i in range(3))
    return tl.attention_from_linears(query, key, value, tl.linear(weights, f"{prefix}.projection"),
                                     num_heads)


def vision_tower(weights: Weights, vision_config: dict) -> tuple[dict, dict]:
    """A `Blip2VisionModel` (names under "vision_model.") as our ViT: (params, `model.image`)."""
    vision_config = {**VISION_DEFAULTS, **vision_config}
    heads = vision_config["num_attention_heads"]
    depth = weights.count("vision_model.encoder.layers.{}.")
    encoder = {}
    for i in range(depth):
        layer = f"vision_model.encoder.layers.{i}"
        encoder[f"block{i}"] = {
            "norm1": tl.layer_norm(weights, f"{layer}.layer_norm1"),
            "attn": _fused_attention(weights, f"{layer}.self_attn", heads,
                                     vision_config["qkv_bias"]),
            "norm2": tl.layer_norm(weights, f"{layer}.layer_norm2"),
            "mlp": tl.mlp(weights, f"{layer}.mlp.fc1", f"{layer}.mlp.fc2"),
        }
    # post_layernorm normalises every token of last_hidden_state: our encoder's final norm.
    encoder["norm"] = tl.layer_norm(weights, "vision_model.post_layernorm")
    params = {
        "embedding": tl.patch_embedding(weights, "vision_model.embeddings.patch_embedding"),
        "cls": weights.take("vision_model.embeddings.class_embedding").reshape(1, 1, -1),
        "pos_embedding": weights.take("vision_model.embeddings.position_embedding")
        .reshape(1, -1, encoder["norm"]["LayerNorm_0"]["scale"].shape[0]),
        "encoder": encoder,
    }
    kernel = params["embedding"]["kernel"]  # [patch, patch, 3, width]
    image = dict(
        variant="", width=kernel.shape[3], depth=depth, num_heads=heads,
        mlp_dim=encoder["block0"]["mlp"]["Dense_0"]["kernel"].shape[1],
        patch_size=kernel.shape[0], pool="cls", pre_norm=False,
        ln_eps=vision_config["layer_norm_eps"],
        activation=tl.activation(vision_config["hidden_act"]))
    return params, image


def _check(config: dict, source: str) -> None:
    text_type = config.get("text_config", {}).get("model_type", "opt")
    problems = []
    if text_type != "llama":
        problems.append(f"text_config.model_type {text_type!r} (only llama: vlm_jax's LM)")
    if config.get("image_token_index") is None:
        problems.append("no image_token_index (an older file: set image_token_index in "
                        "config.json to the tokenizer's image token id)")
    if problems:
        raise ValueError(f"{source}: BLIP-2 checkpoint with {'; '.join(problems)}: not "
                         "supported by vlm_jax's prefix_vlm")


def convert(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(model config for models.build_model, params) of a Blip2ForConditionalGeneration."""
    _check(config, weights.source)
    qformer_config = {**QFORMER_DEFAULTS, **config.get("qformer_config", {})}
    tower_params, image = vision_tower(weights, config.get("vision_config", {}))
    qformer_kwargs, qformer_params = hf_blip2.convert_qformer(weights, qformer_config,
                                                              text=False)
    language = weights.renamed(lambda name: next(
        (new + name[len(old):] for old, new in LM_PREFIXES if name.startswith(old)), None))
    text_config = dict(config["text_config"])
    text_config["tie_word_embeddings"] = bool(text_config.get("tie_word_embeddings")
                                              or config.get("tie_word_embeddings"))
    lm, lm_params = hf_llama.convert(text_config, language)
    params = {"image_tower": tower_params, "qformer": qformer_params,
              "projector": {"linear": tl.dense(weights, "language_projection")}, **lm_params}
    qformer = {key: value for key, value in qformer_kwargs.items() if key != "vocab_size"}
    model = dict(
        name="prefix_vlm", connector="qformer", qformer_reads_cls=True,
        image_token_id=config["image_token_index"],
        bos_id=text_config.get("bos_token_id", 1), pad_id=text_config.get("pad_token_id") or 0,
        image=image, qformer=qformer, **lm)
    return model, params
