"""PyTorch weight layouts -> our Flax parameter layouts, one building block at a time.

torch `nn.Linear.weight` is [out, in] and applies `x @ W.T`; Flax `Dense.kernel` is [in, out].
Our attention projections keep heads as their own axis ([embed, heads, head_dim]), so the
checkpoint's fused [out, in] matrices are transposed and split per head.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Hugging Face `hidden_act` -> our layers.ACTIVATIONS name.
HF_ACTIVATIONS = {
    "gelu": "gelu_exact",
    "gelu_python": "gelu_exact",
    "gelu_pytorch_tanh": "gelu",
    "gelu_new": "gelu",
    "gelu_fast": "gelu",
    "quick_gelu": "quick_gelu",
}


def activation(hf_name: str) -> str:
    if hf_name not in HF_ACTIVATIONS:
        raise ValueError(f"hidden_act {hf_name!r} has no counterpart in vlm_jax; supported: "
                         f"{sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[hf_name]


class Weights:
    """A checkpoint's tensors, taken by name; remembers which were never used."""

    def __init__(self, tensors: dict[str, np.ndarray], source: str = "checkpoint"):
        self._tensors, self._taken, self.source = tensors, set(), source

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def take(self, name: str) -> np.ndarray:
        if name not in self._tensors:
            near = sorted(k for k in self._tensors if k.rsplit(".", 2)[0] in name)[:5]
            raise KeyError(f"{self.source} has no tensor {name!r}; is it a checkpoint of another "
                           f"architecture? (tensors nearby: {near or 'none'})")
        self._taken.add(name)
        return self._tensors[name]

    def count(self, pattern: str) -> int:
        """How many consecutive `pattern.format(i)` prefixes exist (the number of layers)."""
        i = 0
        while any(k.startswith(pattern.format(i)) for k in self._tensors):
            i += 1
        return i

    def unused(self) -> list[str]:
        return sorted(set(self._tensors) - self._taken)

    def renamed(self, rename: Callable[[str], str | None]) -> Weights:
        """A view of the tensors under `rename(name)` (None: left out of the view), so a
        sub-model's converter reads a composite checkpoint under the names it knows; taking
        from the view marks the original as used here."""
        return _RenamedWeights(self, rename)


class _RenamedWeights(Weights):
    def __init__(self, parent: Weights, rename: Callable[[str], str | None]):
        self._parent = parent
        self._original = {new: old for old in parent._tensors
                          if (new := rename(old)) is not None}
        super().__init__({new: parent._tensors[old] for new, old in self._original.items()},
                         parent.source)

    def take(self, name: str) -> np.ndarray:
        array = super().take(name)
        self._parent.take(self._original[name])
        return array


def dense(weights: Weights, name: str, bias: bool = True) -> dict:
    params = {"kernel": weights.take(f"{name}.weight").T}
    if bias:
        params["bias"] = weights.take(f"{name}.bias")
    return params


def layer_norm(weights: Weights, name: str) -> dict:
    """Our LayerNorm wraps flax's as `LayerNorm_0`; old BERT checkpoints say gamma/beta."""
    scale, bias = (("weight", "bias") if f"{name}.weight" in weights else ("gamma", "beta"))
    return {"LayerNorm_0": {"scale": weights.take(f"{name}.{scale}"),
                            "bias": weights.take(f"{name}.{bias}")}}


def attention_from_linears(query: dict, key: dict, value: dict, out: dict,
                           num_heads: int) -> dict:
    """Our Attention params from four torch-layout linears {"weight": [out, in], "bias": [out]}."""
    width = query["weight"].shape[1]
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_attention_heads {num_heads}")
    head_dim = width // num_heads

    def project(linear):
        return {"kernel": linear["weight"].T.reshape(width, num_heads, head_dim),
                "bias": linear["bias"].reshape(num_heads, head_dim)}

    return {
        "query": project(query), "key": project(key), "value": project(value),
        "out": {"kernel": out["weight"].T.reshape(num_heads, head_dim, width),
                "bias": out["bias"]},
    }


def linear(weights: Weights, name: str) -> dict:
    return {"weight": weights.take(f"{name}.weight"), "bias": weights.take(f"{name}.bias")}


def attention(weights: Weights, names: tuple[str, str, str, str], num_heads: int) -> dict:
    """Attention from separate query/key/value/out linears named `names`."""
    return attention_from_linears(*(linear(weights, n) for n in names), num_heads=num_heads)


def mlp(weights: Weights, first: str, second: str) -> dict:
    return {"Dense_0": dense(weights, first), "Dense_1": dense(weights, second)}


def patch_embedding(weights: Weights, name: str) -> dict:
    """Conv2d [out, in, kh, kw] -> flax Conv [kh, kw, in, out]; a missing bias becomes zeros."""
    kernel = weights.take(f"{name}.weight")
    bias = (weights.take(f"{name}.bias") if f"{name}.bias" in weights
            else np.zeros(kernel.shape[0], kernel.dtype))
    return {"kernel": kernel.transpose(2, 3, 1, 0), "bias": bias}


def pre_norm_encoder(weights: Weights, prefix: str, final_norm: str, num_heads: int) -> dict:
    """Our layers.Encoder from a CLIP/SigLIP-style `prefix.layers.{i}` stack + a final norm."""
    depth = weights.count(prefix + ".layers.{}.")
    if not depth:
        raise KeyError(f"{weights.source} has no layers under {prefix!r}")
    encoder = {}
    for i in range(depth):
        layer = f"{prefix}.layers.{i}"
        encoder[f"block{i}"] = {
            "norm1": layer_norm(weights, f"{layer}.layer_norm1"),
            "attn": attention(weights, tuple(f"{layer}.self_attn.{p}_proj"
                                             for p in ("q", "k", "v", "out")), num_heads),
            "norm2": layer_norm(weights, f"{layer}.layer_norm2"),
            "mlp": mlp(weights, f"{layer}.mlp.fc1", f"{layer}.mlp.fc2"),
        }
    encoder["norm"] = layer_norm(weights, final_norm)
    return encoder


def hf_text_tower(weights: Weights, text_config: dict, *, causal: bool,
                  pad_id: int) -> tuple[dict, dict]:
    """A Hugging Face CLIP or SigLIP `text_model` (pre-norm stack + final_layer_norm, pooled
    at the end token) as our TextTransformer: (its params, its `model.text` config)."""
    num_heads = text_config["num_attention_heads"]
    positions = weights.take("text_model.embeddings.position_embedding.weight")
    params = {
        "token_embedding": {
            "embedding": weights.take("text_model.embeddings.token_embedding.weight")},
        "pos_embedding": positions,
        "encoder": pre_norm_encoder(weights, "text_model.encoder",
                                    "text_model.final_layer_norm", num_heads),
    }
    config = dict(
        variant="", width=positions.shape[1], depth=len(params["encoder"]) - 1,
        num_heads=num_heads,
        mlp_dim=params["encoder"]["block0"]["mlp"]["Dense_0"]["kernel"].shape[1],
        max_len=positions.shape[0], causal=causal, pool="eos", pad_id=pad_id,
        ln_eps=text_config["layer_norm_eps"], activation=activation(text_config["hidden_act"]),
    )
    return params, config
