"""A llama.cpp GGUF file of a LLaMA-architecture model -> the parameter tree of `models.lm.LM`.

    model, params, metadata = convert_file("model.Q4_1.gguf")
    hf.convert_hf("smollm2")       # the same through the converter registry (what init_from uses)

Read with the `gguf` package; quantised tensors (Q4_1, Q8_0, ...) are dequantised to float32 by
`gguf.quants.dequantize`, so the model computes with exactly the values llama.cpp would. The
tensors are renamed to Hugging Face Llama names and converted by `hf_llama.convert`, so both
imports give one tree (names: hf_llama's docstring). Two GGUF layouts are undone on the way:

  * llama.cpp's converter permutes the rows of attn_q / attn_k within each head so that RoPE
    rotates adjacent pairs (2j, 2j + 1); our RoPE (and Hugging Face's) rotates j with
    j + hd/2, so each head's rows go back from interleaved to halves;
  * GGUF lists a tensor's shape innermost first ([in, out]); the dequantised array is
    row-major [out, in], which is torch's nn.Linear layout.

The model config comes from the `llama.*` metadata; a file without `output.weight` has tied
embeddings. `gguf_tokenizer.GGUFTokenizer` reads the tokenizer from the same file.
"""

from __future__ import annotations

import numpy as np

from vlm_jax.convert import hf_llama
from vlm_jax.convert.torch_layout import Weights

# GGUF tensor name (after "blk.{i}.") -> Hugging Face Llama name (after "model.layers.{i}.")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}


def read(path) -> tuple[dict, dict]:
    """(metadata {key: value}, tensors {GGUF name: float32 [out, in] array}) of a GGUF file."""
    import gguf  # only when a GGUF file is read

    reader = gguf.GGUFReader(str(path))
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        metadata[key] = field.contents()
    tensors = {}
    for tensor in reader.tensors:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists innermost first
        tensors[tensor.name] = np.asarray(array, np.float32).reshape(shape)
    return metadata, tensors


def unpermute_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """attn_q / attn_k [heads * hd, in] from llama.cpp's interleaved row order (pair rows 2j,
    2j + 1 of a head) back to halves (rows j and j + hd/2), which rotate_half RoPE expects."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, -1).swapaxes(1, 2).reshape(rows, -1)


def hf_config(metadata: dict, has_output: bool) -> dict:
    """The Llama config.json that the `llama.*` metadata describes."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF general.architecture is {arch!r}; vlm_jax imports 'llama' only")

    def get(key, default=None):
        value = metadata.get(f"llama.{key}", default)
        if value is None:
            raise KeyError(f"GGUF metadata lacks llama.{key}; not a complete llama.cpp file")
        return value

    heads = int(get("attention.head_count"))
    width = int(get("embedding_length"))
    head_dim = int(metadata.get("llama.attention.key_length", width // heads))
    rope_dims = int(get("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(f"GGUF rope.dimension_count {rope_dims} != head_dim {head_dim}: partial "
                         "RoPE is not supported by models.lm.LM")
    vocab = metadata.get("llama.vocab_size") or len(metadata["tokenizer.ggml.tokens"])
    return dict(
        model_type="llama", vocab_size=int(vocab), hidden_size=width,
        num_hidden_layers=int(get("block_count")), num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv", heads)), head_dim=head_dim,
        intermediate_size=int(get("feed_forward_length")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings=not has_output,
        max_position_embeddings=int(get("context_length", 2048)),
    )


def hf_tensors(tensors: dict, config: dict) -> dict[str, np.ndarray]:
    """GGUF tensors renamed to Hugging Face Llama names, q/k rows un-permuted."""
    out = {}
    for name, array in tensors.items():
        stem, _, kind = name.rpartition(".")  # "blk.3.attn_q", "weight"
        if stem.startswith("blk."):
            _, layer, short = stem.split(".", 2)
            if short not in _LAYER_NAMES:
                raise ValueError(f"GGUF tensor {name} has no counterpart in models.lm.LM")
            if short == "attn_q":
                array = unpermute_rope_rows(array, config["num_attention_heads"])
            elif short == "attn_k":
                array = unpermute_rope_rows(array, config["num_key_value_heads"])
            out[f"model.layers.{layer}.{_LAYER_NAMES[short]}.{kind}"] = array
        elif stem in _TOP_NAMES:
            out[f"{_TOP_NAMES[stem]}.{kind}"] = array
        elif stem != "rope_freqs":  # llama3-style frequency factors: refused by hf_config
            raise ValueError(f"GGUF tensor {name} has no counterpart in models.lm.LM")
    return out


def convert_file(path) -> tuple[dict, dict, dict]:
    """(`{"lm": LM fields}`, `{"lm": params}`, metadata) of a GGUF file."""
    metadata, tensors = read(path)
    if "rope_freqs.weight" in tensors:
        raise ValueError(f"{path} carries rope_freqs (scaled RoPE), which models.lm.LM lacks")
    config = hf_config(metadata, has_output="output.weight" in tensors)
    model, params = hf_llama.convert(config, Weights(hf_tensors(tensors, config), str(path)))
    return model, params, metadata

