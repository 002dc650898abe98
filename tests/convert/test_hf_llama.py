"""convert/hf_llama.py on a hand-written tiny Llama (numpy + safetensors, torch layouts): every
kernel is the transposed torch weight (checked by value and by applying it), grouped-query
shapes, tied and untied heads, biases; a config that does not describe the weights is an error;
the converted tree is exactly models.lm.LM's."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from vlm_jax.convert import cli, convert_hf, flatten
from vlm_jax.init_from import load_into
from vlm_jax.models import lm
from vlm_jax.train_state import TrainState

VOCAB, WIDTH, HEADS, KV_HEADS, HEAD_DIM, MLP, LAYERS = 16, 16, 4, 2, 4, 20, 2


def _config(**changes) -> dict:
    return dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=VOCAB,
                hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=KV_HEADS, intermediate_size=MLP, rope_theta=500000.0,
                rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu",
                max_position_embeddings=64) | changes


def _tensors(tied: bool = False, bias: bool = False, seed: int = 0) -> dict:
    """A LlamaForCausalLM state dict: torch nn.Linear weights are [out, in]."""
    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (VOCAB, WIDTH), "model.norm.weight": (WIDTH,)}
    if not tied:
        shapes["lm_head.weight"] = (VOCAB, WIDTH)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        layer = f"model.layers.{i}"
        shapes |= {
            f"{layer}.input_layernorm.weight": (WIDTH,),
            f"{layer}.self_attn.q_proj.weight": (q, WIDTH),
            f"{layer}.self_attn.k_proj.weight": (kv, WIDTH),
            f"{layer}.self_attn.v_proj.weight": (kv, WIDTH),
            f"{layer}.self_attn.o_proj.weight": (WIDTH, q),
            f"{layer}.post_attention_layernorm.weight": (WIDTH,),
            f"{layer}.mlp.gate_proj.weight": (MLP, WIDTH),
            f"{layer}.mlp.up_proj.weight": (MLP, WIDTH),
            f"{layer}.mlp.down_proj.weight": (WIDTH, MLP),
        }
        if bias:
            shapes |= {f"{layer}.self_attn.{n}_proj.bias": (size,)
                       for n, size in (("q", q), ("k", kv), ("v", kv), ("o", WIDTH))}
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}


def _write(directory, tensors: dict, config: dict):
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


def test_names_shapes_and_transposes(tmp_path):
    tensors = _tensors()
    converted = convert_hf(_write(tmp_path, tensors, _config()))
    lm = converted.params["lm"]
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    shapes = {"token_embedding/embedding": (VOCAB, WIDTH), "norm/scale": (WIDTH,),
              "lm_head/kernel": (WIDTH, VOCAB)}
    for i in range(LAYERS):
        shapes |= {f"block{i}/{path}": shape for path, shape in {
            "norm1/scale": (WIDTH,), "norm2/scale": (WIDTH,),
            "attn/query/kernel": (WIDTH, HEADS, HEAD_DIM),
            "attn/key/kernel": (WIDTH, KV_HEADS, HEAD_DIM),
            "attn/value/kernel": (WIDTH, KV_HEADS, HEAD_DIM),
            "attn/out/kernel": (HEADS, HEAD_DIM, WIDTH),
            "mlp/gate/kernel": (WIDTH, MLP), "mlp/up/kernel": (WIDTH, MLP),
            "mlp/down/kernel": (MLP, WIDTH)}.items()}
    assert {p: a.shape for p, a in flatten(lm).items()} == shapes
    assert q == HEADS * HEAD_DIM and kv == KV_HEADS * HEAD_DIM
    x = np.random.default_rng(1).normal(size=(5, WIDTH)).astype(np.float32)
    hidden = np.random.default_rng(2).normal(size=(5, MLP)).astype(np.float32)
    torch_names = {"query": "self_attn.q_proj", "key": "self_attn.k_proj",
                   "value": "self_attn.v_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj"}
    for i in range(LAYERS):
        block = lm[f"block{i}"]
        for name, torch_name in torch_names.items():
            weight = tensors[f"model.layers.{i}.{torch_name}.weight"]  # [out, in]
            kernel = block["attn" if name in ("query", "key", "value") else "mlp"][name]["kernel"]
            kernel = kernel.reshape(WIDTH, -1)  # [D, heads, hd] -> [D, heads * hd] (torch order)
            # nn.Linear computes W @ x per token; the kernel must give the same from x @ kernel.
            expected = np.einsum("oi,ti->to", weight, x)
            np.testing.assert_allclose(x @ kernel, expected, rtol=1e-5, atol=1e-5)
            assert kernel[3, 1] == weight[1, 3]  # one element, by hand
        # Head 1, feature 2 of the query is torch output row 1 * HEAD_DIM + 2.
        assert block["attn"]["query"]["kernel"][4, 1, 2] == tensors[
            f"model.layers.{i}.self_attn.q_proj.weight"][HEAD_DIM + 2, 4]
        down = tensors[f"model.layers.{i}.mlp.down_proj.weight"]
        np.testing.assert_allclose(hidden @ block["mlp"]["down"]["kernel"],
                                   np.einsum("oi,ti->to", down, hidden), rtol=1e-5, atol=1e-5)
        o = tensors[f"model.layers.{i}.self_attn.o_proj.weight"]  # [WIDTH, H * hd]
        assert block["attn"]["out"]["kernel"][2, 1, 2] == o[2, 2 * HEAD_DIM + 1]
        np.testing.assert_array_equal(block["norm1"]["scale"],
                                      tensors[f"model.layers.{i}.input_layernorm.weight"])
        np.testing.assert_array_equal(block["norm2"]["scale"],
                                      tensors[f"model.layers.{i}.post_attention_layernorm.weight"])
    np.testing.assert_array_equal(lm["token_embedding"]["embedding"],
                                  tensors["model.embed_tokens.weight"])
    np.testing.assert_array_equal(lm["lm_head"]["kernel"], tensors["lm_head.weight"].T)
    np.testing.assert_array_equal(lm["norm"]["scale"], tensors["model.norm.weight"])
    assert converted.vocab_size == VOCAB and converted.unused == []
    assert converted.model["lm"] == dict(
        width=WIDTH, depth=LAYERS, num_heads=HEADS, num_kv_heads=KV_HEADS,
        head_dim=HEAD_DIM, mlp_dim=MLP, vocab_size=VOCAB, rope_theta=500000.0,
        norm_eps=1e-5, tie_embeddings=False, attention_bias=False)


def test_tied_embeddings_have_no_lm_head_and_biases_are_imported(tmp_path):
    tensors = _tensors(tied=True, bias=True)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()  # saved anyway
    converted = convert_hf(_write(tmp_path, tensors, _config(
        tie_word_embeddings=True, attention_bias=True)))
    lm = converted.params["lm"]
    assert "lm_head" not in lm and converted.unused == ["lm_head.weight"]
    for name, torch_name in zip(("query", "key", "value", "out"), "qkvo", strict=True):
        np.testing.assert_array_equal(
            lm["block1"]["attn"][name]["bias"].reshape(-1),
            tensors[f"model.layers.1.self_attn.{torch_name}_proj.bias"])


@pytest.mark.parametrize("config, message", [
    (_config(num_key_value_heads=4), r"k_proj is \(8, 16\) \(\[out, in\]\) but config\.json's "
                                     r".* imply \(16, 16\)"),
    (_config(num_hidden_layers=3), "num_hidden_layers=3 but the weights hold 2 layers"),
    (_config(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    (_config(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
     "rope_scaling/rope_parameters .* not supported"),
])
def test_a_config_that_does_not_describe_the_weights_is_an_error(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        convert_hf(_write(tmp_path, _tensors(), config))


def test_a_converted_llama_fills_the_lm_subtree_of_a_model(tmp_path, capsys):
    """A VLM-shaped target: its `lm` subtree (an LM built from the converted config) filled
    from the converter output and from the Hugging Face directory itself, `vision` untouched."""
    tensors = _tensors(seed=4)
    source = _write(tmp_path / "hf", tensors, _config())
    assert cli.main([source, str(tmp_path / "out")]) == 0
    assert "vocab_size 16" in capsys.readouterr().out
    converted = convert_hf(source)
    model = lm.LM(**converted.model["lm"])
    fresh = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    target = {"lm": nn.unbox(fresh), "vision": {"kernel": jnp.full((3, 4), 7.0)}}
    state = TrainState(jnp.zeros((), jnp.int32), target, (), None)
    expected = flatten(converted.params["lm"])
    for spec in ({"lm": f"{tmp_path / 'out'}:lm"}, {"lm": source}):
        loaded = flatten(load_into(state, spec).params)
        assert {p for p in loaded if p.startswith("lm/")} == {f"lm/{p}" for p in expected}
        for path, array in expected.items():
            np.testing.assert_array_equal(np.asarray(loaded[f"lm/{path}"]), array)
        np.testing.assert_array_equal(np.asarray(loaded["vision/kernel"]), np.full((3, 4), 7.0))
