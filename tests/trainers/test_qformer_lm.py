"""BLIP-2 stage 2 and MiniGPT-4 on prefix_vlm's "qformer" connector: what each freezes (raw
gradients, optimizer state), the soft prompt reaching the LM, the Q-Former equal to BLIP-2
stage 1's on the same parameters, and the loss against NumPy's cross-entropy."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import blip2, common, minigpt4, qformer_lm
from tests.data.word_tokenizer import WordTokenizer
from tests.trainers.test_prefix_lm import built  # the same tiny build (IMAGE_ID + 1 ids)
from vlm_jax import models, optim, parallel
from vlm_jax.configlib import ConfigError
from vlm_jax.data import formats
from vlm_jax.optim import param_path
from vlm_jax.trainers import prefix_lm

IMAGE_ID = 16  # WordTokenizer's 16 ids, then the added "<image>"
QUERIES = 3


def tiny_config(module, arg: str):
    c = module.get_config(arg)
    c.model.image = common.tower("", width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8,
                                 pool="map")
    c.model.qformer.update(width=16, depth=2, num_heads=2, mlp_dim=32, num_queries=QUERIES)
    c.model.lm.update(vocab_size=IMAGE_ID, width=32, depth=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=64)
    c.model.update(image_token_id=IMAGE_ID, bos_id=1, pad_id=0)
    c.data.update(image_size=16, text_length=8)
    if c.data.format == "prefix_lm":
        c.data.update(text_length=24, prompt_image_tokens=QUERIES)
    return c


def caption_batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    text = np.array([[4, 9, 10, 11, 2, 0, 0, 0], [6, 7, 8, 12, 13, 14, 2, 0]], np.int32)
    return {"image": rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8), "text_tokens": text}


def chat_batch() -> dict:
    tokenizer = WordTokenizer(specials=("<image>",))
    rows = [formats.prefix_lm_example(tokenizer, "what colour is the circle?", answer, 24,
                                      image_tokens=QUERIES) for answer in ("red", "blue")]
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    batch["image"] = caption_batch()["image"]
    return batch


def raw_gradients(model, config, params, batch):
    """The loss's gradients with the config's frozen parameters' gradients stopped, before
    any optimizer (so a zero is a zero, not a clipped or Adam-normalised step)."""
    loss_fn = prefix_lm.make_loss_fn(model, config)
    rules = tuple(config.optim.param_rules)
    return jax.grad(lambda p: loss_fn(optim.stop_frozen_gradients(p, rules), batch, None)[0])(
        params)


def nonzero_tops(grads) -> set[str]:
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    return {param_path(path).split("/")[0] for path, g in flat if np.any(np.asarray(g))}


def state_tops(config, params) -> set[str]:
    tx, _ = optim.make_optimizer(config.optim, 10)
    flat = jax.tree_util.tree_flatten_with_path(tx.init(params))[0]
    tops = set()
    for path, leaf in flat:
        if np.ndim(leaf) > 0:  # moments, not step counters
            parts = param_path(path).split("/")
            tops |= {name for name in ("image_tower", "qformer", "projector", "lm")
                     if name in parts}
    return tops


@pytest.mark.parametrize("module, arg, batch_fn, trained", [
    pytest.param(blip2, "tiny,stage=2", caption_batch, {"qformer", "projector"},
                 marks=pytest.mark.slow),  # MiniGPT-4's rows freeze the same Q-Former
    (minigpt4, "tiny,stage=1", caption_batch, {"projector"}),
    (minigpt4, "tiny,stage=2", chat_batch, {"projector"}),
])
def test_only_the_trained_parts_get_gradients_and_optimizer_state(module, arg, batch_fn,
                                                                  trained):
    config = tiny_config(module, arg)
    model, params = built(config)
    assert set(params) == {"image_tower", "qformer", "projector", "lm"}
    assert "token_embedding" not in params["qformer"]  # queries only: no word table
    grads = raw_gradients(model, config, params, batch_fn())
    assert nonzero_tops(grads) == trained
    if "qformer" in trained:  # every Q-Former array the queries use learns
        flat = jax.tree_util.tree_flatten_with_path(grads["qformer"])[0]
        assert all(np.any(np.asarray(g)) for _, g in flat)
    assert state_tops(config, params) == trained


def test_blip2_stage2_lm_trains_with_train_lm():
    config = tiny_config(blip2, "tiny,stage=2,train_lm")
    model, params = built(config)
    grads = raw_gradients(model, config, params, caption_batch())
    assert nonzero_tops(grads) == {"qformer", "projector", "lm"}


def test_the_soft_prompt_reaches_the_lm():
    """Another image changes the caption tokens' logits; the text-only positions before the
    placeholders (BOS) cannot see it (causal)."""
    config = tiny_config(minigpt4, "tiny,stage=1")
    model, params = built(config)
    batch = caption_batch()
    tokens, _ = prefix_lm.training_sequence(batch, QUERIES, 1, IMAGE_ID, 0)
    tokens = tokens[:, :-1]
    first = np.asarray(model.apply({"params": params}, batch["image"], tokens))
    second = np.asarray(model.apply({"params": params}, caption_batch(seed=1)["image"], tokens))
    np.testing.assert_array_equal(first[:, 0], second[:, 0])  # BOS sees no image
    caption = slice(1 + QUERIES, None)
    assert np.abs(first[:, caption] - second[:, caption]).min() > 1e-6
    embeddings = np.asarray(model.apply({"params": params}, batch["image"],
                                        method="image_embeddings"))
    assert embeddings.shape == (2, QUERIES, config.model.lm.width)


def test_query_outputs_equal_blip2_stage1_on_the_same_parameters():
    stage1 = blip2.get_config("tiny")
    stage1.model.image = tiny_config(blip2, "tiny,stage=2").model.image
    stage1.model.qformer.update(width=16, depth=2, num_heads=2, mlp_dim=32, num_queries=QUERIES)
    stage1.data.update(image_size=16, text_length=8)
    source = models.build_model(stage1.model, IMAGE_ID + 2)
    source_params = nn.unbox(source.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)),
                                         jnp.zeros((1, 8), jnp.int32))["params"])
    config = tiny_config(blip2, "tiny,stage=2")
    model, params = built(config)
    # What the stage-1 init_from entries load: the tower whole, the Q-Former's query parts.
    take = lambda ours, theirs: ({name: take(ours[name], theirs[name]) for name in ours}
                                 if isinstance(ours, dict) else theirs)
    params = {**params, "image_tower": source_params["image_tower"],
              "qformer": take(params["qformer"], source_params["qformer"])}
    images = caption_batch()["image"]
    expected = source.apply({"params": source_params}, images,
                            method=lambda m, x: m.qformer(m.image_features(x), None))
    got = model.apply({"params": params}, images, method="query_outputs")
    assert got.shape == (2, QUERIES, 16)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6, rtol=0)
    entries = set(eval(config.init_from or "{}"))  # no stage1=: nothing to load
    assert not entries
    named = blip2.get_config("tiny,stage=2,stage1=runs/b").init_from
    paths = {param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    covered = {p for p in paths for prefix in eval(named)
               if p == prefix or p.startswith(prefix + "/")}
    assert covered == {p for p in paths if p.split("/")[0] in ("image_tower", "qformer")}


@pytest.mark.parametrize("module, arg, batch_fn", [
    (blip2, "tiny,stage=2", caption_batch),
    (minigpt4, "tiny,stage=2", chat_batch),
])
def test_loss_is_the_numpy_cross_entropy_of_the_supervised_tokens(module, arg, batch_fn):
    config = tiny_config(module, arg)
    model, params = built(config)
    batch = batch_fn()
    loss, _ = prefix_lm.make_loss_fn(model, config)(params, batch, None)
    if "mask_loss" in batch:
        tokens, weights = batch["text_tokens"], batch["mask_loss"]
        expected_terms = 4  # each answer word and its EOS
    else:
        head = np.concatenate([np.full((2, 1), 1), np.full((2, QUERIES), IMAGE_ID)], axis=1)
        tokens = np.concatenate([head, batch["text_tokens"]], axis=1)
        weights = np.concatenate([np.zeros_like(head), batch["text_tokens"] != 0], axis=1)
        expected_terms = 5 + 7
    logits = np.asarray(model.apply({"params": params}, batch["image"], tokens[:, :-1]),
                        np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    terms = [-log_probs[r, t - 1, tokens[r, t]] for r in range(2)
             for t in range(1, tokens.shape[1]) if weights[r, t]]
    assert len(terms) == expected_terms
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)


def test_config_errors_and_init_entries():
    with pytest.raises(ConfigError, match="stage=3"):
        blip2.get_config("tiny,stage=3")
    with pytest.raises(ConfigError, match="stage 2's"):
        blip2.get_config("tiny,lm=runs/lm")
    with pytest.raises(ConfigError, match="drop blip2="):
        minigpt4.get_config("tiny,stage=2,blip2=runs/b")
    one = minigpt4.get_config("tiny,stage=1,blip2=runs/b,lm=runs/lm")
    assert eval(one.init_from)["lm"] == "runs/lm"
    assert eval(one.init_from)["qformer/layer0/cross_attention"] == "runs/b"
    assert "qformer/layer1/cross_attention" not in eval(one.init_from)  # every other layer
    two = minigpt4.get_config("tiny,stage=2,stage1=runs/m1")
    assert two.init_from == "runs/m1" and two.data.format == "prefix_lm"
    assert two.data.prompt_image_tokens == two.model.qformer.num_queries == 8
    assert two.optim.param_rules == minigpt4.FROZEN



def test_captioner_decodes_greedily_through_the_soft_prompt():
    """KV-cached greedy decoding (each placeholder input taking the next query embedding)
    equals the argmax of the full forward, token by token."""
    config = tiny_config(minigpt4, "tiny,stage=1")
    config.decode.max_len = 3
    model, params = built(config)
    tokenizer = WordTokenizer(specials=("<image>",))
    mesh = parallel.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    captioner = prefix_lm.make_captioner(model, params, tokenizer, mesh, config)
    pixels = caption_batch()["image"]
    generated = captioner.generate(pixels)
    for row in range(2):
        sequence, new = [1, *[IMAGE_ID] * QUERIES], []
        for _ in range(3):
            logits = np.asarray(model.apply({"params": params}, pixels[row:row + 1],
                                            np.array([sequence])))[0, -1].copy()
            logits[0] = -np.inf  # decoding never emits padding
            token = int(np.argmax(logits))
            sequence.append(token)
            new.append(token)
            if token == 2:
                break
        assert generated[row] == tokenizer.decode(np.array([new + [2]]))[0]


def _shrunk(module, arg: str):
    """A config of `arg` at the smallest sizes (the same in every stage, so workdirs load)."""
    c = module.get_config(arg + ",steps=2,batch=8")
    c.model.image = common.tower("", width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8,
                                 pool="map")
    c.model.qformer.update(width=16, depth=2, num_heads=2, mlp_dim=32, num_queries=QUERIES)
    if "lm" in c.model:
        c.model.lm.update(width=32, depth=1, num_heads=4, num_kv_heads=2, head_dim=8,
                          mlp_dim=64)
    if c.data.get("format") == "prefix_lm":
        c.data.prompt_image_tokens = QUERIES
    c.log_every, c.checkpoint_every, c.evals.names = 1, 2, ()
    return c


@pytest.mark.slow  # four short loop.train runs (~1-2 min on a busy 2-core machine)
def test_stages_train_through_the_loop_and_load_each_other(tmp_path, capsys):
    """BLIP-2 stage 1 -> stage 2 and -> MiniGPT-4 stage 1 -> stage 2, two steps each: every
    init_from map fits, the losses are finite, and MiniGPT-4's frozen Q-Former and image tower
    leave stage 2 equal to BLIP-2 stage 1's."""
    from vlm_jax import loop
    from vlm_jax.convert import hf
    from vlm_jax.init_from import load_into
    runs = {name: str(tmp_path / name) for name in ("b1", "b2", "m1", "m2")}
    loop.train(_shrunk(blip2, "tiny"), runs["b1"])
    configs = {"b2": _shrunk(blip2, f"tiny,stage=2,stage1={runs['b1']}"),
               "m1": _shrunk(minigpt4, f"tiny,stage=1,blip2={runs['b1']}"),
               "m2": _shrunk(minigpt4, f"tiny,stage=2,stage1={runs['m1']}")}
    for name, config in configs.items():
        loop.train(config, runs[name])
    out = capsys.readouterr().out
    assert "init_from 'qformer/layer0/cross_attention' <- " in out
    final_losses = [float(x) for x in re.findall(r"step +2/2 +loss ([-+.\w]+)", out)]
    assert len(final_losses) == 4 and np.all(np.isfinite(final_losses)), final_losses
    state = _fresh_state(configs["m2"])
    final = hf.flatten(load_into(state, runs["m2"], verbose=False).params)
    from_b1 = qformer_lm.stage1_entries(runs["b1"], configs["m2"].model.qformer)
    first = hf.flatten(load_into(state, from_b1, verbose=False).params)
    frozen = [p for p in final if p.split("/")[0] in ("image_tower", "qformer")]
    assert len(frozen) > 20
    for path in frozen:
        np.testing.assert_array_equal(np.asarray(final[path]), np.asarray(first[path]), path)
    # The projector trained (stage 1's and stage 2's steps moved it from its init).
    assert any(np.any(np.asarray(final[p]) != np.asarray(first[p]))
               for p in final if p.startswith("projector/"))


def _fresh_state(config):
    """A freshly initialised train state of `config` (what init_from loads into)."""
    from vlm_jax import parallel, trainers
    from vlm_jax.loop import build
    mesh = parallel.make_mesh(config.mesh.to_dict())
    trainer = trainers.get_trainer(config.trainer)
    return build(config, trainer, 257, mesh, config.sharding_rules)[1]  # 256 + "<image>"
