"""Hugging Face `LlamaForCausalLM` / `LlamaModel` -> the parameter tree of `models.lm.LM`.

`init_from={"lm": "path/to/hf_llama"}` fills a model's `lm` subtree path for path:

    lm/token_embedding/embedding     [vocab, D]
    lm/block{i}/norm1/scale          [D]            input_layernorm: x / rms(x) * scale
    lm/block{i}/attn/query/kernel    [D, H, hd]     every kernel maps in -> out: y = x @ kernel
    lm/block{i}/attn/key/kernel      [D, KV, hd]    KV = num_key_value_heads (grouped queries)
    lm/block{i}/attn/value/kernel    [D, KV, hd]
    lm/block{i}/attn/out/kernel      [H, hd, D]
    lm/block{i}/norm2/scale          [D]            post_attention_layernorm
    lm/block{i}/mlp/gate/kernel      [D, F]         SwiGLU: down(silu(gate(x)) * up(x))
    lm/block{i}/mlp/up/kernel        [D, F]
    lm/block{i}/mlp/down/kernel      [F, D]
    lm/norm/scale                    [D]
    lm/lm_head/kernel                [D, vocab]     absent when tie_word_embeddings (embed^T)

query/key/value/out carry a `bias` ([H, hd] / [KV, hd] / [D]) when config.json sets
attention_bias. The q and k output features keep Hugging Face's per-head order, in which RoPE
rotates feature j of a head together with feature j + hd/2 (`rotate_half`, as
`layers.apply_rope` does), not adjacent pairs (Meta's original layout). The model config
returned (`{"lm": ...}`) holds `LM`'s own field names, so it can update `config.model` as is.
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


def attention_params(q: dict, k: dict, v: dict, o: dict, heads: int, kv_heads: int,
                     head_dim: int) -> dict:
    """{"kernel": [in, out]} (+ "bias") of the four projections -> `layers.Attention`'s
    DenseGeneral layout: query/key/value [D, heads, hd], out [heads, hd, D]."""

    def split(params: dict, num: int) -> dict:  # output features -> (heads, head_dim)
        out = {"kernel": params["kernel"].reshape(params["kernel"].shape[0], num, head_dim)}
        if "bias" in params:
            out["bias"] = params["bias"].reshape(num, head_dim)
        return out

    out = {"kernel": o["kernel"].reshape(heads, head_dim, o["kernel"].shape[1])}
    if "bias" in o:
        out["bias"] = o["bias"]
    return {"query": split(q, heads), "key": split(k, kv_heads), "value": split(v, kv_heads),
            "out": out}


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
    # transformers >= 5 writes RoPE settings as rope_parameters; older files as rope_theta and
    # rope_scaling. Only plain RoPE ("default") is what models.lm.LM computes.
    rope = dict(config.get("rope_parameters") or config["rope_scaling"] or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default" or config["mlp_bias"]:
        raise ValueError(f"Llama rope_scaling/rope_parameters {rope!r} / mlp_bias "
                         f"{config['mlp_bias']!r} are not supported by models.lm.LM (plain RoPE, "
                         "bias-free SwiGLU)")
    rope_theta = float(rope.get("rope_theta", config["rope_theta"]))
    width, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or width // heads
    return dict(
        vocab_size=config["vocab_size"], width=width, depth=config["num_hidden_layers"],
        num_heads=heads, num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=head_dim, mlp_dim=config["intermediate_size"],
        rope_theta=rope_theta, norm_eps=float(config["rms_norm_eps"]),
        tie_embeddings=bool(config["tie_word_embeddings"]),
        attention_bias=bool(config["attention_bias"]),
    )


def convert(config: dict, weights: Weights) -> tuple[dict, dict]:
    """(`{"lm": lm_config}`, `{"lm": params}`) of a Llama checkpoint (names: module doc)."""
    lm = lm_config(config)
    p = _prefix(weights)
    depth = weights.count(p + "layers.{}.")
    if depth != lm["depth"]:
        raise ValueError(f"{weights.source}: config.json says num_hidden_layers={lm['depth']} "
                         f"but the weights hold {depth} layers")
    bias = lm["attention_bias"]
    params = {"token_embedding": {"embedding": weights.take(f"{p}embed_tokens.weight")}}
    for i in range(depth):
        layer = f"{p}layers.{i}"
        projections = {name: _linear(weights, f"{layer}.self_attn.{name}_proj", bias)
                       for name in ("q", "k", "v", "o")}
        _check_shapes(projections, lm, weights.source)
        params[f"block{i}"] = {
            "norm1": {"scale": weights.take(f"{layer}.input_layernorm.weight")},
            "attn": attention_params(**projections, heads=lm["num_heads"],
                                     kv_heads=lm["num_kv_heads"], head_dim=lm["head_dim"]),
            "norm2": {"scale": weights.take(f"{layer}.post_attention_layernorm.weight")},
            "mlp": {name: _linear(weights, f"{layer}.mlp.{name}_proj", False)
                    for name in ("gate", "up", "down")},
        }
    params["norm"] = {"scale": weights.take(f"{p}norm.weight")}
    # Tied checkpoints may still store lm_head.weight (a copy of the embedding): left unused.
    if not lm["tie_embeddings"]:
        params["lm_head"] = _linear(weights, "lm_head", bias=False)
    return {"lm": lm}, {"lm": params}


def _check_shapes(attn: dict, lm: dict, source: str) -> None:
    """config.json's head counts against the weights: a wrong num_key_value_heads or head_dim
    would otherwise pass here and fail as a reshape deep inside the model."""
    width, hd = lm["width"], lm["head_dim"]
    expected = {"q": (width, lm["num_heads"] * hd), "k": (width, lm["num_kv_heads"] * hd),
                "v": (width, lm["num_kv_heads"] * hd), "o": (lm["num_heads"] * hd, width)}
    for name, shape in expected.items():
        if attn[name]["kernel"].shape != shape:
            raise ValueError(
                f"{source}: {name}_proj is {attn[name]['kernel'].shape[::-1]} ([out, in]) but "
                f"config.json's hidden_size, num_attention_heads, num_key_value_heads and "
                f"head_dim imply {shape[::-1]}; the config does not describe these weights")
