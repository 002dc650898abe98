"""Hugging Face `LlamaForCausalLM` / `LlamaModel` -> a plain nested dict of NumPy arrays.

No vlm_jax model consumes it yet; the names are what a LLaMA-style decoder (models/lm.py) is
expected to declare, so `init_from={"lm": "path/to/hf_llama"}` fills it path for path:

    lm/embed/embedding              [vocab, D]
    lm/block{i}/attn_norm/scale     [D]            RMSNorm weight, used as is: x / rms(x) * scale
    lm/block{i}/attn/q/kernel       [D, H * hd]    every kernel is [in, out]: y = x @ kernel
    lm/block{i}/attn/k/kernel       [D, KV * hd]   KV = num_key_value_heads (grouped queries)
    lm/block{i}/attn/v/kernel       [D, KV * hd]
    lm/block{i}/attn/o/kernel       [H * hd, D]
    lm/block{i}/mlp_norm/scale      [D]
    lm/block{i}/mlp/gate/kernel     [D, F]         SwiGLU: down(silu(gate(x)) * up(x))
    lm/block{i}/mlp/up/kernel       [D, F]
    lm/block{i}/mlp/down/kernel     [F, D]
    lm/final_norm/scale             [D]
    lm/lm_head/kernel               [D, vocab]     absent when tie_word_embeddings (use embed.T)

q/k/v/o carry a `bias` [out] too when config.json sets attention_bias (mlp_bias: gate/up/down).
The q and k output features keep Hugging Face's per-head order, in which RoPE rotates feature j
of a head together with feature j + hd/2 (`rotate_half`), not adjacent pairs (Meta's original
layout). The model config returned (`{"lm": ...}`) records the sizes and RoPE settings.
"""

from __future__ import annotations

from vlm_jax.convert.torch_layout import Weights

DEFAULTS = dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                hidden_act="silu", attention_bias=False, mlp_bias=False, rope_scaling=None,
                max_position_embeddings=2048)


def _linear(weights: Weights, name: str, bias: bool) -> dict:
    """torch nn.Linear [out, in] -> {"kernel": [in, out]} (+ "bias" [out])."""
    params = {"kernel": weights.take(f"{name}.weight").T}
    if bias:
        params["bias"] = weights.take(f"{name}.bias")
    return params


def _prefix(weights: Weights) -> str:
    """LlamaForCausalLM nests the decoder under "model."; a bare LlamaModel does not."""
    for prefix in ("model.", ""):
        if f"{prefix}embed_tokens.weight" in weights:
            return prefix
    raise KeyError(f"{weights.source} has no embed_tokens.weight: not a Llama checkpoint")


def lm_config(config: dict) -> dict:
    """The sizes and settings of the decoder described by a Llama config.json."""
    config = {**DEFAULTS, **config}
    if config["hidden_act"] != "silu":
        raise ValueError(f"Llama hidden_act {config['hidden_act']!r} is not supported; "
                         "only silu (SwiGLU) is")
    width, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or width // heads
    return dict(
        type="llama", width=width, depth=config["num_hidden_layers"], num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads, head_dim=head_dim,
        mlp_dim=config["intermediate_size"], vocab_size=config["vocab_size"],
        max_len=config["max_position_embeddings"], rope_theta=float(config["rope_theta"]),
        rope_scaling=config["rope_scaling"], norm_eps=float(config["rms_norm_eps"]),
        tie_embeddings=bool(config["tie_word_embeddings"]),
        attention_bias=bool(config["attention_bias"]), mlp_bias=bool(config["mlp_bias"]),
    )


def convert(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(`{"lm": lm_config}`, `{"lm": params}`) of a Llama checkpoint (names: module doc)."""
    lm = lm_config(config)
    p = _prefix(weights)
    depth = weights.count(p + "layers.{}.")
    if depth != lm["depth"]:
        raise ValueError(f"{weights.source}: config.json says num_hidden_layers={lm['depth']} "
                         f"but the weights hold {depth} layers")
    attn_bias, mlp_bias = lm["attention_bias"], lm["mlp_bias"]
    params = {"embed": {"embedding": weights.take(f"{p}embed_tokens.weight")}}
    for i in range(depth):
        layer = f"{p}layers.{i}"
        params[f"block{i}"] = {
            "attn_norm": {"scale": weights.take(f"{layer}.input_layernorm.weight")},
            "attn": {name: _linear(weights, f"{layer}.self_attn.{name}_proj", attn_bias)
                     for name in ("q", "k", "v", "o")},
            "mlp_norm": {"scale": weights.take(f"{layer}.post_attention_layernorm.weight")},
            "mlp": {name: _linear(weights, f"{layer}.mlp.{name}_proj", mlp_bias)
                    for name in ("gate", "up", "down")},
        }
    params["final_norm"] = {"scale": weights.take(f"{p}norm.weight")}
    # Tied checkpoints may still store lm_head.weight (a copy of the embedding): left unused.
    if not lm["tie_embeddings"]:
        params["lm_head"] = _linear(weights, "lm_head", bias=False)
    _check_shapes(params, lm, weights.source)
    return {"lm": lm}, {"lm": params}


def _check_shapes(params: dict, lm: dict, source: str) -> None:
    """config.json's head counts against the weights: a wrong num_key_value_heads or head_dim
    would otherwise pass here and fail as a reshape deep inside the model."""
    width, hd = lm["width"], lm["head_dim"]
    expected = {"q": (width, lm["num_heads"] * hd), "k": (width, lm["num_kv_heads"] * hd),
                "v": (width, lm["num_kv_heads"] * hd), "o": (lm["num_heads"] * hd, width)}
    attn = params["block0"]["attn"]
    for name, shape in expected.items():
        if attn[name]["kernel"].shape != shape:
            raise ValueError(
                f"{source}: {name}_proj is {attn[name]['kernel'].shape[::-1]} ([out, in]) but "
                f"config.json's hidden_size, num_attention_heads, num_key_value_heads and "
                f"head_dim imply {shape[::-1]}; the config does not describe these weights")
