"""Hugging Face `BertModel` (BERT, MiniLM, sentence-transformers encoders) -> our BertTextTower.

Returns the text tower alone, as `{"text_tower": ...}` with the `model.text` config of a
`"type": "bert"` tower, so it loads into any TwoTower (init_from_regex="text_tower/.*").
The pooler (dense + tanh over [CLS]) is not imported: sentence encoders mean-pool instead.
"""

from __future__ import annotations

from vlm_jax.convert import torch_layout as tl
from vlm_jax.convert.torch_layout import Weights

# What convert("minilm") yields for all-MiniLM-L6-v2 (tests check it): a config's `model.text`
# for that checkpoint, e.g. common.tower("", **MINILM_TOWER) with data.tokenizer="minilm".
MINILM_TOWER = dict(type="bert", width=384, depth=6, num_heads=12, mlp_dim=1536, max_len=512,
                    type_vocab_size=2, pool="mean", pad_id=0, ln_eps=1e-12,
                    activation="gelu_exact")
DEFAULTS = dict(num_attention_heads=12, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
                position_embedding_type="absolute")


def _prefix(weights: Weights) -> str:
    """Task models (BertForMaskedLM, ...) nest the encoder under "bert."."""
    for prefix in ("", "bert.", "model."):
        if f"{prefix}embeddings.word_embeddings.weight" in weights:
            return prefix
    raise KeyError(f"{weights.source} has no embeddings.word_embeddings.weight: not a BERT model")


def convert(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(`{"text": tower config}`, `{"text_tower": params}`) of a BertModel checkpoint."""
    config = {**DEFAULTS, **config}
    if config["position_embedding_type"] != "absolute":
        raise ValueError(f"position_embedding_type {config['position_embedding_type']!r} is not "
                         "supported; only absolute position embeddings are")
    heads, p = config["num_attention_heads"], _prefix(weights)
    positions = weights.take(f"{p}embeddings.position_embeddings.weight")  # [max_len, D]
    tower = {
        "token_embedding": {"embedding": weights.take(f"{p}embeddings.word_embeddings.weight")},
        "pos_embedding": positions,
        "type_embedding": weights.take(f"{p}embeddings.token_type_embeddings.weight"),
        "embedding_norm": tl.layer_norm(weights, f"{p}embeddings.LayerNorm"),
    }
    depth = weights.count(p + "encoder.layer.{}.")
    for i in range(depth):
        layer = f"{p}encoder.layer.{i}"
        tower[f"block{i}"] = {
            "attn": tl.attention(weights, (f"{layer}.attention.self.query",
                                           f"{layer}.attention.self.key",
                                           f"{layer}.attention.self.value",
                                           f"{layer}.attention.output.dense"), heads),
            "norm1": tl.layer_norm(weights, f"{layer}.attention.output.LayerNorm"),
            "mlp": tl.mlp(weights, f"{layer}.intermediate.dense", f"{layer}.output.dense"),
            "norm2": tl.layer_norm(weights, f"{layer}.output.LayerNorm"),
        }
    text = dict(
        type="bert", variant="", width=positions.shape[1], depth=depth, num_heads=heads,
        mlp_dim=tower["block0"]["mlp"]["Dense_0"]["kernel"].shape[1],
        max_len=positions.shape[0], type_vocab_size=tower["type_embedding"].shape[0],
        pool="mean", pad_id=config["pad_token_id"], ln_eps=config["layer_norm_eps"],
        activation=tl.activation(config["hidden_act"]),
    )
    return {"text": text}, {"text_tower": tower}
