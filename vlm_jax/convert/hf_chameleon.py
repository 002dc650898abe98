"""Hugging Face `ChameleonForConditionalGeneration` / `ChameleonModel` (the text transformer)
-> the parameter tree of `models.lm.LM` as early fusion builds it (models/early_fusion.py).

The tree is hf_llama's (token_embedding, block{i}/norm1|attn|norm2|mlp, norm, lm_head) plus,
per block, Chameleon's QK-norm: `self_attn.q_norm` / `k_norm` are LayerNorms whose statistics
run over head_dim while the scale and bias are per head ([heads, hd]), applied before RoPE:

    block{i}/attn/query_norm/scale|bias   [H, hd]     LM qk_norm_type="head_layernorm"
    block{i}/attn/key_norm/scale|bias     [KV, hd]

Their epsilon is fixed at 1e-5 in transformers (not rms_norm_eps). `swin_norm` (Chameleon-34B's
x + norm(f(x))) is LM norm_position "output"; the norms keep their names: input_layernorm ->
norm1, post_attention_layernorm -> norm2. The VQ-VAE (`model.vqmodel.*`, an encoder without a
decoder) is not read: early fusion brings its own tokenizer (config.vq).
"""

from __future__ import annotations

from vlm_jax.convert import hf_llama
from vlm_jax.convert.torch_layout import Weights

QK_NORM_EPS = 1e-5  # ChameleonLayerNorm's, hard-coded in transformers


def lm_config(config: dict) -> dict:
    """`LM`'s fields for a Chameleon config.json (the text transformer's settings)."""
    fields = hf_llama.lm_config({**config, "tie_word_embeddings": config.get(
        "tie_word_embeddings", False)})
    return {**fields, "qk_norm": True, "qk_norm_type": "head_layernorm",
            "qk_norm_eps": QK_NORM_EPS,
            "norm_position": "output" if config.get("swin_norm") else "pre"}


def _head_norm(weights: Weights, name: str) -> dict:
    return {"scale": weights.take(f"{name}.weight"), "bias": weights.take(f"{name}.bias")}


def convert(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(`{"lm": lm_config}`, `{"lm": params}`) of a Chameleon checkpoint (names: module doc)."""
    lm = lm_config(config)
    # hf_llama reads everything but the VQ-VAE and the QK-norms (taken below).
    llama_view = weights.renamed(
        lambda name: None if name.startswith("model.vqmodel.") or (
            ".self_attn.q_norm." in name or ".self_attn.k_norm." in name) else name)
    _, params = hf_llama.convert({**config, "tie_word_embeddings": lm["tie_embeddings"]},
                                 llama_view)
    params = params["lm"]
    prefix = "model." if "model.embed_tokens.weight" in weights else ""
    for i in range(lm["depth"]):
        attn = params[f"block{i}"]["attn"]
        attn["query_norm"] = _head_norm(weights, f"{prefix}layers.{i}.self_attn.q_norm")
        attn["key_norm"] = _head_norm(weights, f"{prefix}layers.{i}.self_attn.k_norm")
    return {"lm": lm}, {"lm": params}
