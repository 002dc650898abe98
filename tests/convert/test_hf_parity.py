"""Converted CLIP / SigLIP / BERT checkpoints compute what transformers computes (float32, 1e-5).

Golden fixtures (tests/fixtures, made by tests/convert/make_fixtures.py) always run; the live
tests build fresh random models with transformers whenever torch is importable.
"""

import json

import numpy as np
import pytest
from parity import FIXTURES, converted_outputs, load_make_fixtures, max_abs_diffs

from vlm_jax.convert import cli, convert_hf

KINDS = ("clip", "siglip", "bert")
TOLERANCE = 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_converted_model_matches_golden_transformers_outputs(kind):
    expected = np.load(FIXTURES / f"{kind}_tiny" / "expected.npz")
    diffs = max_abs_diffs(converted_outputs(FIXTURES / f"{kind}_tiny", expected), expected)
    assert max(diffs.values()) < TOLERANCE, diffs
    # Embeddings must not be trivially small, or 1e-5 would prove nothing.
    key = "mean_pooled" if kind == "bert" else "text_features"
    assert np.abs(expected[key]).max() > 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_converted_model_matches_live_transformers(kind, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    make = load_make_fixtures()
    model, inputs = make.tiny_model(kind, seed=7), make.tiny_inputs(kind, seed=8)
    model.save_pretrained(tmp_path)
    expected = make.tiny_outputs(kind, model, inputs)
    diffs = max_abs_diffs(converted_outputs(tmp_path, inputs), expected)
    assert max(diffs.values()) < TOLERANCE, diffs


@pytest.mark.parametrize("kind, unused", [("clip", []), ("siglip", []),
                                          ("bert", ["pooler.dense.bias", "pooler.dense.weight"])])
def test_every_checkpoint_tensor_is_imported_except_the_bert_pooler(kind, unused):
    assert convert_hf(str(FIXTURES / f"{kind}_tiny")).unused == unused


def test_pickle_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="never loads"):
        convert_hf(str(tmp_path))


def test_unknown_model_type_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    supported = "bert, blip-2, clip, clip_text_model, clip_vision_model, llama, llava, siglip, "
    with pytest.raises(ValueError, match=f"imports {supported}"):
        convert_hf(str(tmp_path))


def test_cli_writes_params_and_model_config_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "siglip"
    assert cli.main([str(FIXTURES / "siglip_tiny"), str(out)]) == 0
    record = json.loads((out / "model_config.json").read_text())
    assert record["vocab_size"] == 64
    assert record["model"]["image"]["pool"] == "map" and record["model"]["proj_bias"]
    assert (out / "params").is_dir()
    assert cli.main([str(FIXTURES / "siglip_tiny"), str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main([str(FIXTURES / "siglip_tiny"), str(out), "--overwrite"]) == 0
