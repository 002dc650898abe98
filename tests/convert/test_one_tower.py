"""convert_hf on a checkpoint of one tower: CLIP/SigLIP vision or text models alone (their own
model_type, or a two-tower model_type whose files hold one tower) convert to exactly that tower
of the whole model's conversion; a directory with neither tower is a clear error."""

import json

import numpy as np
import pytest
from parity import FIXTURES
from safetensors.numpy import save_file
from states import sharded_state

from vlm_jax.convert import cli, convert_hf, flatten
from vlm_jax.convert.hf_files import read_weights
from vlm_jax.init_from import load_into


def _one_tower_dir(tmp_path, kind: str, keep: tuple[str, ...], config: dict):
    """The tiny `kind` fixture with only the tensors named `keep*` and `config` as config.json."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    tensors = read_weights(FIXTURES / f"{kind}_tiny")
    kept = {name: array for name, array in tensors.items() if name.startswith(keep)}
    assert kept and len(kept) < len(tensors)
    save_file(kept, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def _fixture_config(kind: str) -> dict:
    return json.loads((FIXTURES / f"{kind}_tiny" / "config.json").read_text())


# (kind, tensors kept, how config.json says it, tower of the whole model that must come out)
CASES = {
    "siglip_vision_model": ("siglip", ("vision_model.",), "own", ("image_tower",), "image"),
    "siglip_as_vision": ("siglip", ("vision_model.",), "whole", ("image_tower",), "image"),
    "siglip_text_model": ("siglip", ("text_model.",), "own", ("text_tower", "text_proj"), "text"),
    "clip_vision_model": ("clip", ("vision_model.", "visual_projection."), "own",
                          ("image_tower", "image_proj"), "image"),
    "clip_as_text": ("clip", ("text_model.",), "whole", ("text_tower",), "text"),
}


@pytest.mark.parametrize("case", CASES)
def test_one_tower_converts_to_that_tower_of_the_whole_model(tmp_path, case):
    kind, keep, how, names, field = CASES[case]
    whole = convert_hf(str(FIXTURES / f"{kind}_tiny"))
    config = _fixture_config(kind)
    sub = config[f"{'vision' if field == 'image' else 'text'}_config"]
    directory = _one_tower_dir(tmp_path, kind, keep, sub if how == "own" else config)
    converted = convert_hf(str(directory))
    expected = {p: a for p, a in flatten(whole.params).items() if p.split("/")[0] in names}
    got = flatten(converted.params)
    assert sorted(got) == sorted(expected)
    for path, array in expected.items():
        np.testing.assert_array_equal(got[path], array, err_msg=path)
    assert converted.model == {field: whole.model[field]}
    assert converted.vocab_size == (64 if field == "text" else None)
    assert converted.unused == []


def test_a_vision_only_converter_output_fills_the_image_tower(tmp_path, capsys):
    config = _fixture_config("siglip")["vision_config"]
    directory = _one_tower_dir(tmp_path / "hf", "siglip", ("vision_model.",), config)
    assert cli.main([str(directory), str(tmp_path / "out")]) == 0
    assert "no token embedding" in capsys.readouterr().out
    whole = convert_hf(str(FIXTURES / "siglip_tiny"))
    _, fresh = sharded_state(whole.model)
    loaded = flatten(load_into(fresh, {"image_tower": str(tmp_path / "out")}).params)
    for path, leaf in flatten(fresh.params).items():
        reference = flatten(whole.params)[path] if path.startswith("image_tower/") else leaf
        np.testing.assert_array_equal(np.asarray(loaded[path]), np.asarray(reference))


def test_a_two_tower_directory_with_neither_tower_is_a_clear_error(tmp_path):
    save_file({"logit_scale": np.ones(1, np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(ValueError, match=r"a siglip checkpoint without vision_model\.\* or "
                                         r"text_model\.\* tensors \(it has logit_scale\)"):
        convert_hf(str(tmp_path))
