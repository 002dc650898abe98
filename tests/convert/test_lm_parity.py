"""models.lm.LM with imported Llama weights computes what transformers computes (float32).

Golden fixtures (tests/fixtures/llama_tiny*, made by tests/convert/make_lm_fixtures.py) always
run; the live test rebuilds a fresh random LlamaForCausalLM whenever torch imports. The same
weights written as a GGUF file (q/k rows permuted the way llama.cpp's converter does, written
here independently of the converter) must give the same logits through convert/gguf_llama.
"""

import importlib.util
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.convert import convert_hf, hf_files
from vlm_jax.init_from import load_into
from vlm_jax.models import lm
from vlm_jax.train_state import TrainState

FIXTURES = Path(__file__).parents[1] / "fixtures"
# Measured: max |ours - transformers| 2.4e-6 (untied), 2.1e-6 (tied); logits reach 3.5 and 4.3.
TOLERANCE = 1e-5


def load_make_lm_fixtures():
    path = Path(__file__).with_name("make_lm_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_lm_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def our_logits(source: str, tokens: np.ndarray) -> np.ndarray:
    converted = convert_hf(source)
    model = lm.LM(**converted.model["lm"])
    return np.asarray(model.apply({"params": converted.params["lm"]},
                                  jnp.asarray(tokens, jnp.int32)))


@pytest.mark.parametrize("name, tied", [("llama_tiny", False), ("llama_tiny_tied", True)])
def test_llama_logits_match_golden_transformers(name, tied):
    expected = np.load(FIXTURES / name / "expected.npz")
    converted = convert_hf(str(FIXTURES / name))
    assert converted.model["lm"]["tie_embeddings"] is tied
    assert converted.model["lm"]["rope_theta"] == 500.0  # from transformers 5's rope_parameters
    logits = our_logits(str(FIXTURES / name), expected["tokens"])
    assert np.abs(expected["logits"]).max() > 1.0  # not trivially small
    np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("tied", [False, True])
def test_llama_logits_match_live_transformers(tied, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    make = load_make_lm_fixtures()
    model, tokens = make.tiny_llama(tied, seed=5), make.tiny_tokens(seed=6)
    model.save_pretrained(tmp_path)
    np.testing.assert_allclose(our_logits(str(tmp_path), tokens),
                               make.tiny_logits(model, tokens), rtol=0, atol=TOLERANCE)


def _interleave_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q/k [heads * hd, in]: row j of a head's
    first half and row j of its second half become rows 2j and 2j + 1."""
    out = np.empty_like(weight)
    hd = weight.shape[0] // heads
    for h in range(heads):
        for j in range(hd // 2):
            out[h * hd + 2 * j] = weight[h * hd + j]
            out[h * hd + 2 * j + 1] = weight[h * hd + hd // 2 + j]
    return out


def write_gguf(hf_dir: Path, path: Path) -> None:
    """The tiny Llama of `hf_dir` as a llama.cpp GGUF file (float32 tensors)."""
    gguf = pytest.importorskip("gguf")
    config = hf_files.read_config(hf_dir)
    tensors = hf_files.read_weights(hf_dir)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(config["head_dim"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    layer_names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                   "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                   "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                   "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down"}
    for name, array in tensors.items():
        if name == "lm_head.weight" and config["tie_word_embeddings"]:
            continue
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            if module == "self_attn.q_proj":
                array = _interleave_rope_rows(array, heads)
            elif module == "self_attn.k_proj":
                array = _interleave_rope_rows(array, kv_heads)
            gguf_name = f"blk.{layer}.{layer_names[module]}.weight"
        else:
            gguf_name = names[name]
        writer.add_tensor(gguf_name, np.ascontiguousarray(array, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# Tied is SmolLM2's layout; the untied file is slow (the GGUF writer and reader are the same).
@pytest.mark.parametrize("name", [pytest.param("llama_tiny", marks=pytest.mark.slow),
                                  "llama_tiny_tied"])
def test_a_gguf_file_gives_the_transformers_logits(name, tmp_path):
    path = tmp_path / f"{name}.gguf"
    write_gguf(FIXTURES / name, path)
    expected = np.load(FIXTURES / name / "expected.npz")
    np.testing.assert_allclose(our_logits(str(path), expected["tokens"]), expected["logits"],
                               rtol=0, atol=TOLERANCE)
    # init_from={"lm": "<file>.gguf"} fills a model's lm subtree.
    converted = convert_hf(str(path))
    model = lm.LM(**converted.model["lm"])
    fresh = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))["params"])
    state = TrainState(jnp.zeros((), jnp.int32), {"lm": jax.tree_util.tree_map(
        jnp.zeros_like, fresh)}, (), None)
    loaded = load_into(state, {"lm": str(path)}, verbose=False).params["lm"]
    logits = model.apply({"params": loaded}, jnp.asarray(expected["tokens"], jnp.int32))
    np.testing.assert_allclose(np.asarray(logits), expected["logits"], rtol=0, atol=TOLERANCE)
