"""config.init_from: converted, Hugging Face and workdir sources, loaded by regex into a sharded
train state; wrong sources and regexes are clear errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from parity import FIXTURES, max_abs_diffs
from states import model_config, sharded_state, unflatten

from configs import common
from vlm_jax import checkpoint, loop
from vlm_jax.convert import cli, convert_hf, flatten
from vlm_jax.init_from import InitFromError, load_into

SIGLIP, BERT = FIXTURES / "siglip_tiny", FIXTURES / "bert_tiny"


def _bert_two_tower() -> dict:
    """A small TwoTower whose text tower is the converted tiny BERT (the LiT + MiniLM shape)."""
    image = dict(variant="", width=32, depth=1, num_heads=4, mlp_dim=64, patch_size=8, pool="map")
    return dict(name="two_tower", embed_dim=16, logit_scale_init=1.0, logit_bias_init=None,
                max_logit_scale=100.0, image=image, text=model_config(BERT)["text"])


def test_converter_output_loads_one_tower_and_keeps_shardings(tmp_path):
    out = tmp_path / "siglip"
    assert cli.main([str(SIGLIP), str(out)]) == 0
    _, state = sharded_state(json.loads((out / "model_config.json").read_text())["model"])
    loaded = load_into(state, str(out), "text_tower/.*")
    source = flatten(convert_hf(str(SIGLIP)).params)
    before, after = flatten(state.params), flatten(loaded.params)
    for path, leaf in after.items():
        assert leaf.sharding == before[path].sharding, path
        reference = source[path] if path.startswith("text_tower/") else before[path]
        np.testing.assert_array_equal(np.asarray(leaf), reference, err_msg=path)
    embedding = "text_tower/token_embedding/embedding"
    assert not np.allclose(before[embedding], source[embedding])  # something really changed
    assert after["image_tower/embedding/kernel"].sharding.spec[-1] == "fsdp"


def test_full_load_from_a_hugging_face_directory_reproduces_transformers():
    model, state = sharded_state(model_config(SIGLIP))
    state = load_into(state, str(SIGLIP))
    expected = np.load(SIGLIP / "expected.npz")
    images = expected["pixel_values"].transpose(0, 2, 3, 1)
    image_emb, text_emb, _ = model.apply({"params": state.params}, images,
                                         expected["input_ids"].astype(np.int32))
    diffs = max_abs_diffs({"image_embeds": image_emb, "text_embeds": text_emb},
                          {k: expected[k] for k in ("image_embeds", "text_embeds")})
    assert max(diffs.values()) < 1e-5, diffs


def test_a_training_workdir_is_a_source(tmp_path):
    _, trained = sharded_state(model_config(SIGLIP))
    trained = load_into(trained, str(SIGLIP))
    saver = checkpoint.Checkpointer(str(tmp_path / "run"), async_save=False)
    saver.save(3, trained, {"iterator": {}, "corrupt_records": 0})
    saver.close()
    _, fresh = sharded_state(model_config(SIGLIP))
    loaded = flatten(load_into(fresh, str(tmp_path / "run"), "image_tower/.*").params)
    for path, leaf in flatten(trained.params).items():
        reference = leaf if path.startswith("image_tower/") else flatten(fresh.params)[path]
        np.testing.assert_array_equal(np.asarray(loaded[path]), np.asarray(reference))


def test_bert_text_tower_loads_into_a_two_tower():
    model, state = sharded_state(_bert_two_tower())
    state = load_into(state, str(BERT), "text_tower/.*")
    expected = np.load(BERT / "expected.npz")
    pooled, _ = model.apply({"params": state.params}, expected["input_ids"].astype(np.int32),
                            method=lambda m, tokens: m.text_tower(tokens))
    np.testing.assert_allclose(pooled, expected["mean_pooled"], atol=1e-5)


@pytest.mark.parametrize("source, regex, message", [
    (SIGLIP, "txt_tower/.*", "matches none of the model's parameters"),
    (BERT, ".*", r"lacks 92 of the 94 parameters selected by .*: image_proj/bias"),
    (SIGLIP, ".*", r"other shapes .* text_tower/pos_embedding \(16, 32\) vs model \(32, 32\)"),
    (FIXTURES, ".*", "neither a converter output"),
])
def test_wrong_sources_and_regexes_are_clear_errors(source, regex, message):
    _, state = sharded_state(model_config(SIGLIP))
    params = flatten(state.params)
    # A model with a longer text context than the checkpoint's 16 positions:
    params["text_tower/pos_embedding"] = jnp.zeros((32, 32))
    state = state.replace(params=unflatten(params))
    with pytest.raises(InitFromError, match=message):
        load_into(state, str(source), regex)


@pytest.mark.slow  # a whole loop.train (~15 s on an idle 2-core machine, 60 s when busy)
def test_train_starts_from_init_from(tmp_path, capsys):
    """The loop hook: a fresh run loads the image tower; lr 0 keeps it through one step."""
    c = common.base_config()
    c.loss = dict(name="sigmoid")
    c.model = model_config(SIGLIP)
    c.model.text = common.tiny_tower(width=32, depth=1, num_heads=4, mlp_dim=64, max_len=16,
                                      causal=False, pool="eos")
    c.init_from, c.init_from_regex = str(SIGLIP), "image_tower/.*"
    c.total_steps, c.batch_size, c.checkpoint_every, c.log_every = 1, 8, 1, 1
    c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = 0.0, 0, 0.0
    c.data.text_length, c.evals.names = 16, ()
    loop.train(c, str(tmp_path / "run"))
    assert "init_from" in capsys.readouterr().out
    _, fresh = sharded_state(dict(c.model.to_dict()), vocab_size=256)
    trained = flatten(load_into(fresh, str(tmp_path / "run"), "image_tower/.*").params)
    source = flatten(convert_hf(str(SIGLIP)).params)
    for path in (p for p in source if p.startswith("image_tower/")):
        np.testing.assert_allclose(np.asarray(trained[path]), source[path], atol=1e-7)


def test_an_unreadable_hugging_face_source_is_a_checkpoint_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    _, state = sharded_state(model_config(SIGLIP))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="never loads"):
        load_into(state, str(tmp_path))
