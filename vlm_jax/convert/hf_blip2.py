"""Hugging Face BLIP-2 Q-Former weights -> our `models.qformer.QFormer` (and BLIP-2's heads).

Reads the tensors of a `Blip2ForImageTextRetrieval` (or any BLIP-2 model whose state dict
holds `query_tokens`, `embeddings.*` and `qformer.*`): HF layer i's `attention` is our
`self_attention`, `crossattention` our `cross_attention` (query pass only, keys and values
projected from the image features' width), `intermediate_query`/`output_query` our
`mlp_query`, `intermediate`/`output` our `mlp`; `qformer.layernorm` is the embedding norm
over queries and text alike.
"""

from __future__ import annotations

import numpy as np

from vlm_jax.convert import torch_layout as tl


def _attention(weights: tl.Weights, prefix: str, num_heads: int) -> dict:
    """HF `...attention.{query,key,value}` + `...output.dense` -> our Attention params; keys and
    values keep their own input width (the image features' for cross-attention)."""

    def project(name):
        weight, bias = weights.take(f"{prefix}.attention.{name}.weight"), weights.take(
            f"{prefix}.attention.{name}.bias")
        head_dim = weight.shape[0] // num_heads
        return {"kernel": weight.T.reshape(weight.shape[1], num_heads, head_dim),
                "bias": bias.reshape(num_heads, head_dim)}

    out = weights.take(f"{prefix}.output.dense.weight")  # [D, D]
    width = out.shape[0]
    return {name: project(name) for name in ("query", "key", "value")} | {
        "out": {"kernel": out.T.reshape(num_heads, width // num_heads, width),
                "bias": weights.take(f"{prefix}.output.dense.bias")}}


def _ffn(weights: tl.Weights, layer: str, suffix: str) -> dict:
    return tl.mlp(weights, f"{layer}.intermediate{suffix}.dense", f"{layer}.output{suffix}.dense")


def convert_qformer(weights: tl.Weights, qformer_config: dict,
                    text: bool = True) -> tuple[dict, dict]:
    """(QFormer kwargs, QFormer params) from the checkpoint's tensors and its qformer_config.
    `text` False: the queries-only Q-Former of BLIP-2 stage 2 (QFormer(text=False), as
    `Blip2ForConditionalGeneration` holds it): no word/position tables, no text FFNs."""
    heads, frequency = qformer_config["num_attention_heads"], qformer_config[
        "cross_attention_frequency"]
    query_tokens = weights.take("query_tokens")[0]  # [Q, D]
    params = {"query_tokens": query_tokens,
              "embedding_norm": tl.layer_norm(weights, "qformer.layernorm")}
    if text:
        params["token_embedding"] = {
            "embedding": weights.take("embeddings.word_embeddings.weight")}
        params["pos_embedding"] = weights.take("embeddings.position_embeddings.weight")
    depth = weights.count("qformer.encoder.layer.{}.")
    for i in range(depth):
        layer = f"qformer.encoder.layer.{i}"
        converted = {
            "self_attention": _attention(weights, f"{layer}.attention", heads),
            "self_attention_norm": tl.layer_norm(weights, f"{layer}.attention.output.LayerNorm"),
            "mlp_query": _ffn(weights, layer, "_query"),
            "mlp_query_norm": tl.layer_norm(weights, f"{layer}.output_query.LayerNorm"),
        }
        if text:
            converted["mlp"] = _ffn(weights, layer, "")
            converted["mlp_norm"] = tl.layer_norm(weights, f"{layer}.output.LayerNorm")
        if i % frequency == 0:
            converted["cross_attention"] = _attention(weights, f"{layer}.crossattention", heads)
            converted["cross_attention_norm"] = tl.layer_norm(
                weights, f"{layer}.crossattention.output.LayerNorm")
        params[f"layer{i}"] = converted
    # Without text the word table's size and max_len size nothing (QFormer(text=False)).
    kwargs = dict(
        vocab_size=params["token_embedding"]["embedding"].shape[0] if text else 0,
        width=query_tokens.shape[1], depth=depth, num_heads=heads,
        mlp_dim=qformer_config["intermediate_size"], num_queries=query_tokens.shape[0],
        cross_attention_frequency=frequency,
        max_len=(params["pos_embedding"].shape[0] if text
                 else qformer_config.get("max_position_embeddings", 512)),
        pad_id=qformer_config.get("pad_token_id", 0), ln_eps=qformer_config["layer_norm_eps"],
        activation=tl.activation(qformer_config["hidden_act"]))
    return kwargs, params


def convert_retrieval_heads(weights: tl.Weights) -> dict:
    """vision_projection, text_projection and itm_head as our Blip2's vision_proj, text_proj,
    itm_head."""
    return {"vision_proj": tl.dense(weights, "vision_projection"),
            "text_proj": tl.dense(weights, "text_projection"),
            "itm_head": tl.dense(weights, "itm_head")}


def as_float32(tensors: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, np.float32) for name, value in tensors.items()}
