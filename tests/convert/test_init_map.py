"""config.init_from as a map {model prefix: "source[:source prefix]"}: each entry fills its own
subtree from its own source (workdirs, converter outputs, Hugging Face directories), the rest
keeps its fresh init; every way an entry can fail to fit is one clear error."""

import ast
import json
import re

import ml_collections
import numpy as np
import pytest
from parity import FIXTURES
from states import model_config, sharded_state, unflatten

from configs import common
from vlm_jax import checkpoint, loop, main
from vlm_jax.convert import Converted, convert_hf, flatten, save_converted
from vlm_jax.init_from import Entry, InitFromError, load_into, parse_spec

SIGLIP, BERT = FIXTURES / "siglip_tiny", FIXTURES / "bert_tiny"
TOP_NAMES = "image_proj, image_tower, logit_bias, logit_scale, text_proj, text_tower"


def _save_run(workdir, state) -> str:
    saver = checkpoint.Checkpointer(str(workdir), async_save=False)
    saver.save(3, state, {"iterator": {}, "corrupt_records": 0})
    saver.close()
    return str(workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two training workdirs of the SigLIP-shaped TwoTower, with different random params."""
    root, saved = tmp_path_factory.mktemp("runs"), {}
    for name, seed in (("a", 1), ("b", 2)):
        _, state = sharded_state(model_config(SIGLIP), seed=seed)
        saved[name] = (_save_run(root / name, state), flatten(state.params))
    return saved


def _host(flat: dict) -> dict:
    return {path: np.asarray(leaf) for path, leaf in flat.items()}


def test_two_runs_fill_different_subtrees_and_the_rest_stays_fresh(runs):
    (run_a, params_a), (run_b, params_b) = runs["a"], runs["b"]
    _, fresh = sharded_state(model_config(SIGLIP))
    spec = {"image_tower/encoder": run_a,  # same name in the source: image_tower/encoder
            "text_tower": f"{run_b}:text_tower", "logit_scale": f"{run_b}:logit_scale"}
    before = flatten(fresh.params)
    after = flatten(load_into(fresh, spec).params)
    sources = {path: ("a", params_a) if path.startswith("image_tower/encoder/")
               else ("b", params_b) if path.startswith("text_tower/") or path == "logit_scale"
               else ("fresh", before) for path in before}
    counts = {"a": 0, "b": 0, "fresh": 0}
    for path, (name, reference) in sources.items():
        assert after[path].sharding == before[path].sharding, path
        np.testing.assert_array_equal(np.asarray(after[path]), np.asarray(reference[path]),
                                      err_msg=f"{path} should come from {name}")
        counts[name] += 1
    # 2 image blocks of 16 arrays + the final norm; text: 2 embeddings + 34; 94 in all.
    assert counts == {"a": 34, "b": 37, "fresh": 23}, counts
    # The three origins hold different values, so the equalities above tell them apart.
    for path in ("image_tower/encoder/norm/LayerNorm_0/scale", "text_tower/pos_embedding"):
        assert not np.allclose(params_a[path], params_b[path])
        assert not np.allclose(params_a[path], before[path])


def test_converter_outputs_and_hugging_face_directories_are_sources(tmp_path):
    """A source prefix ("out:vit"), a source whose root is the subtree (no prefix, no subtree
    of that name) and a Hugging Face directory (converted in memory)."""
    _, fresh = sharded_state(model_config(SIGLIP))
    _, other = sharded_state(model_config(SIGLIP), seed=3)
    vit = {k: v for k, v in _host(flatten(other.params)).items() if k.startswith("image_tower/")}
    nested = unflatten({path.replace("image_tower/", "vit/", 1): v for path, v in vit.items()})
    save_converted(Converted("synthetic", {}, nested, None, [], "test"), str(tmp_path / "nested"))
    root = unflatten({path.removeprefix("image_tower/"): v for path, v in vit.items()})
    save_converted(Converted("synthetic", {}, root, None, [], "test"), str(tmp_path / "root"))
    siglip = flatten(convert_hf(str(SIGLIP)).params)
    before = _host(flatten(fresh.params))
    for image_source in (f"{tmp_path / 'nested'}:vit", str(tmp_path / "root")):
        spec = {"image_tower": image_source, "text_tower": str(SIGLIP)}
        after = _host(flatten(load_into(fresh, spec).params))
        for path, leaf in after.items():
            reference = (vit if path.startswith("image_tower/") else
                         siglip if path.startswith("text_tower/") else before)[path]
            np.testing.assert_array_equal(leaf, reference, err_msg=path)


def test_init_from_regex_narrows_a_map(runs):
    run_a, params_a = runs["a"]
    _, fresh = sharded_state(model_config(SIGLIP))
    after = flatten(load_into(fresh, {"image_tower": run_a}, "image_tower/encoder/.*").params)
    for path, leaf in flatten(fresh.params).items():
        reference = params_a[path] if path.startswith("image_tower/encoder/") else leaf
        np.testing.assert_array_equal(np.asarray(after[path]), np.asarray(reference))


def _long_context_state():
    """The SigLIP TwoTower with a 32-position text context (the checkpoint has 16)."""
    config = model_config(SIGLIP)
    config["text"] = {**config["text"], "max_len": 32}
    return sharded_state(config)[1]


def _shallow_image_state():
    """The SigLIP TwoTower with a 1-block image encoder (the checkpoint has 2)."""
    config = model_config(SIGLIP)
    config["image"] = {**config["image"], "depth": 1}
    return sharded_state(config)[1]


@pytest.mark.parametrize("spec, regex, make_state, message", [
    ({"img_tower": "A"}, ".*", None,
     f"'img_tower' <- 'A': the model has no parameter under 'img_tower'; its top-level names "
     f"are {TOP_NAMES}; use one of them"),
    ({"image_tower": "A:vision"}, ".*", None,
     f"'image_tower' <- 'A:vision': the source has no parameter under 'vision'; its top-level "
     f"names are {TOP_NAMES}; write source:prefix"),
    ({"text_tower": str(SIGLIP)}, ".*", _long_context_state,
     r"shapes differ: model text_tower/pos_embedding \(32, 32\) vs source "
     r"text_tower/pos_embedding \(16, 32\); set the model config"),
    ({"image_tower": "A", "image_tower/encoder": "B"}, ".*", None,
     "entries 'image_tower' <- 'A' and 'image_tower/encoder' <- 'B' overlap"),
    ((("logit_scale", "A"), ("logit_scale", "B")), ".*", None,
     "entries 'logit_scale' <- 'A' and 'logit_scale' <- 'B' overlap"),
    ({"text_tower": str(BERT)}, ".*", None,
     r"the source lacks 34 of the 36 model parameters under 'text_tower': "
     r"text_tower/encoder/block0/attn/key/bias \(source text_tower/encoder/block0/attn/key/bias\)"),
    ({"image_tower": "A"}, ".*", _shallow_image_state,
     r"the source has 16 parameters under 'image_tower' that the model lacks under 'image_tower': "
     r"image_tower/encoder/block1/.*; set the model config to the source's sizes"),
    ({"image_tower": "A"}, "text_tower/.*", None,
     "init_from_regex 'text_tower/.*' excludes every parameter under 'image_tower'"),
    ("{'image_tower': }", ".*", None, "starts with '{' but is no dict literal"),
    ("{}", ".*", None, "is an empty map"),
    ({"image_tower": 3}, ".*", None, r"\('image_tower', 3\) is not a \(target prefix, source\)"),
])
def test_entries_that_do_not_fit_are_one_line_errors(runs, spec, regex, make_state, message):
    sources = {"A": runs["a"][0], "B": runs["b"][0]}
    state = make_state() if make_state else sharded_state(model_config(SIGLIP))[1]

    def resolve(text):  # "A:vision" -> "<run a>:vision"; messages say "A" for readability
        name, colon, prefix = text.partition(":")
        return sources[name] + colon + prefix if name in sources else text

    if isinstance(spec, dict):
        spec = {k: resolve(v) if isinstance(v, str) else v for k, v in spec.items()}
    elif isinstance(spec, tuple):
        spec = tuple((k, resolve(v)) for k, v in spec)
    with pytest.raises(InitFromError) as error:
        load_into(state, spec, regex)
    text = str(error.value)
    for name, path in sources.items():
        text = text.replace(path, name)
    assert "\n" not in text
    assert re.search(message, text), text


def test_the_map_survives_the_command_line_and_config_json():
    literal = "{'image_tower': 'runs/siglip_tiny:image_tower', 'lm': 'path/to/llama'}"
    expected = [Entry("image_tower", "runs/siglip_tiny", "image_tower"),
                Entry("lm", "path/to/llama", None)]
    config = main.load("configs/siglip.py:tiny", [f"--config.init_from={literal}"])
    assert config.init_from == literal and parse_spec(config.init_from) == expected
    recorded = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
    assert parse_spec(recorded.init_from) == expected
    as_json = json.dumps({"image_tower": "runs/siglip_tiny:image_tower", "lm": "path/to/llama"})
    assert parse_spec(as_json) == expected
    # A ConfigDict or (prefix, source) pairs, before and after a config.json round trip.
    mapping = ast.literal_eval(literal)
    for value in (ml_collections.ConfigDict(mapping), tuple(mapping.items())):
        holder = ml_collections.ConfigDict({"init_from": value})
        recorded = ml_collections.ConfigDict(json.loads(holder.to_json_best_effort()))
        assert parse_spec(value) == parse_spec(recorded.init_from) == expected
    assert parse_spec("runs/siglip_tiny") is None  # the single-source form is unchanged


@pytest.mark.parametrize("text, entry", [
    ("runs/a", Entry("t", "runs/a", None)),
    ("runs/a:", Entry("t", "runs/a", "")),  # explicitly the source's whole tree
    ("runs/a:image_tower/encoder/", Entry("t", "runs/a", "image_tower/encoder")),
    ("gs://bucket/run", Entry("t", "gs://bucket/run", None)),
    ("gs://bucket/run:img", Entry("t", "gs://bucket/run", "img")),
])
def test_source_prefixes_split_at_the_last_colon(text, entry):
    assert parse_spec({"t/": text}) == [entry]


@pytest.mark.slow  # a whole loop.train (~15 s on an idle 2-core machine, 60 s when busy)
def test_train_starts_from_a_map(tmp_path, capsys):
    """The loop hook, unchanged, takes the map: the image tower from the Hugging Face SigLIP,
    the text tower fresh; lr 0 keeps the loaded tower through one step."""
    c = common.base_config()
    c.loss = dict(name="sigmoid")
    c.model = model_config(SIGLIP)
    c.model.text = common.tiny_tower(width=32, depth=1, num_heads=4, mlp_dim=64, max_len=16,
                                      causal=False, pool="eos")
    c.init_from = str({"image_tower": str(SIGLIP)})
    c.total_steps, c.batch_size, c.checkpoint_every, c.log_every = 1, 8, 1, 1
    c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = 0.0, 0, 0.0
    c.data.text_length, c.evals.names = 16, ()
    loop.train(c, str(tmp_path / "run"))
    assert "init_from 'image_tower' <- " in capsys.readouterr().out
    _, fresh = sharded_state(dict(c.model.to_dict()), vocab_size=256)
    trained = flatten(load_into(fresh, {"image_tower": str(tmp_path / "run")}).params)
    source = flatten(convert_hf(str(SIGLIP)).params)
    for path in (p for p in source if p.startswith("image_tower/")):
        np.testing.assert_allclose(np.asarray(trained[path]), source[path], atol=1e-7)
