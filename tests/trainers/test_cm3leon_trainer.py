"""The CM3leon trainer: stage 2's loss mask covers exactly the answer tokens of each task (rows
rebuilt in Python from the documents' texts and the VQ's codes) and its loss is NumPy cross-
entropy over them; stage 1 without infilling is early fusion's loss, with it every row moves
one span; one jitted train step of each stage gives a finite loss and a nonzero gradient;
(slow) both stages train through the CLI and the text -> image CLI draws from stage 2."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import chameleon, cm3leon
from tests.models.test_early_fusion import CODES, IMAGE_SIZE, random_vq
from vlm_jax import early_fusion_generation, loop, parallel
from vlm_jax.data import cm3leon_sources, formats
from vlm_jax.data.tokenizer import load_tokenizer
from vlm_jax.data.world import World
from vlm_jax.models import early_fusion, lm
from vlm_jax.trainers import cm3leon as trainer
from vlm_jax.trainers import early_fusion as fusion_trainer

ROOT = Path(__file__).parents[2]


def small_config(stage):
    config = chameleon.get_config("tiny")
    config.trainer = "cm3leon"
    config.model.update(width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64)
    config.loss = dict(stage=stage, z_loss_weight=1e-5, caption_first=0.0,
                       infill_probability=0.0, text_to_image=0.0)
    config.data.update(image_size=IMAGE_SIZE, image_tokens=16, image_codes=CODES,
                       special_tokens=cm3leon.CM3_TOKENS, max_images=1 if stage == 2 else 3,
                       text_length=56 if stage == 2 else 120)
    config.batch_size = 8
    return config


@functools.cache
def tokenizer():
    return load_tokenizer(small_config(2).data)


def vocab():
    return early_fusion.image_vocabulary(tokenizer(), CODES)


def tiny_lm():
    model = lm.LM(vocab_size=tokenizer().vocab_size, width=32, depth=2, num_heads=4,
                  num_kv_heads=2, mlp_dim=64)
    params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 8), jnp.int32))["params"]
    return model, params


def batch_of(docs, config):
    rows = [formats.interleaved_example(tokenizer(), d["texts"], d["closing"],
                                        len(d["images"]), config.data) for d in docs]
    m = config.data.max_images
    images = np.zeros((len(docs), m, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for b, doc in enumerate(docs):
        images[b, :len(doc["images"])] = doc["images"]
    keys = ("text_tokens", "segment_ids", "image_positions", "image_valid")
    return {**{key: np.stack([r[key] for r in rows]) for key in keys}, "images": images}


def instruction_docs(n=8):
    source = cm3leon_sources.InstructionSource(World("train", image_size=IMAGE_SIZE))
    return [source.document(i, 1) for i in range(n)]


def expected_rows(docs, caption_first, length):
    """(tokens, answer mask) per document, in Python: module doc of trainers/cm3leon.py."""
    v, text_ids = vocab(), tokenizer().text_ids
    tokens, masks = [], []
    for doc in docs:
        codes = list(random_vq().tokenize(np.stack(doc["images"]))[0] + v.code_offset)
        image = [v.boi_id, *codes, v.eoi_id]
        if doc["closing"]:  # VQA: the answer and EOS
            prompt, answer = [v.bos_id, *image, *text_ids(doc["texts"][0])], text_ids(
                doc["closing"])
        elif caption_first:  # text -> image: BOS caption <boi> | codes <eoi> EOS
            prompt, answer = [v.bos_id, *text_ids(doc["texts"][0]), v.boi_id], image[1:]
        else:  # captioning
            prompt, answer = [v.bos_id, *image], text_ids(doc["texts"][0])
        row = prompt + answer + [v.eos_id]
        mask = [0] * len(prompt) + [1] * (len(answer) + 1)
        tokens.append(row + [v.pad_id] * (length - len(row)))
        masks.append(mask + [0] * (length - len(mask)))
    return np.array(tokens), np.array(masks, bool)


@pytest.mark.parametrize("caption_first", [False, True])
def test_stage2_mask_is_exactly_the_answers_and_the_loss_numpy_ce_over_them(caption_first):
    config = small_config(2)
    config.loss.text_to_image = float(caption_first)  # every non-VQA row, or none
    docs = instruction_docs()
    batch = jax.tree_util.tree_map(jnp.asarray, batch_of(docs, config))
    vqa = trainer.is_vqa_row(batch["segment_ids"])
    assert np.asarray(vqa).tolist() == [bool(d["closing"]) for d in docs]
    flip = jnp.asarray(caption_first) & ~vqa
    tokens = fusion_trainer.fused_tokens(random_vq(), vocab(), batch, flip)
    mask = trainer.answer_mask(tokens, batch["segment_ids"], vqa, vocab())
    want_tokens, want_mask = expected_rows(docs, caption_first, config.data.text_length)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(mask, want_mask)
    model, params = tiny_lm()
    loss_fn = trainer.make_loss_fn(model, config, image_tokenizer=random_vq())
    loss, metrics = jax.jit(loss_fn)(params, batch, jax.random.PRNGKey(0))
    logits = np.asarray(model.apply({"params": params}, jnp.asarray(want_tokens[:, :-1]),
                                    valid=jnp.asarray(want_tokens[:, :-1] != vocab().pad_id)),
                        np.float64)
    log_z = np.log(np.exp(logits).sum(-1))
    targets, weights = want_tokens[:, 1:], want_mask[:, 1:]
    log_p = np.take_along_axis(logits, targets[..., None], -1)[..., 0] - log_z
    ce = -(log_p * weights).sum() / weights.sum()
    z = (log_z**2 * weights).sum() / weights.sum()
    np.testing.assert_allclose(metrics["cross_entropy"], ce, rtol=1e-5)
    np.testing.assert_allclose(loss, ce + 1e-5 * z, rtol=1e-5)
    rows = np.array([bool(d["closing"]) for d in docs])
    vqa_ce = -(log_p * weights)[rows].sum() / weights[rows].sum()
    np.testing.assert_allclose(metrics["vqa_loss"], vqa_ce, rtol=1e-5)


def stage1_docs(n=8):
    world = World("train", image_size=IMAGE_SIZE)
    table = np.array([[(i + 3) % 16, (i + 7) % 16] for i in range(16)])
    source = cm3leon_sources.RetrievalSource(world, table)
    return [source.document(i, 3) for i in range(n)]


def test_stage1_without_infilling_is_early_fusions_loss_and_with_it_every_row_moves_a_span():
    config = small_config(1)
    batch = jax.tree_util.tree_map(jnp.asarray, batch_of(stage1_docs(), config))
    model, params = tiny_lm()
    loss, metrics = jax.jit(trainer.make_loss_fn(model, config, image_tokenizer=random_vq()))(
        params, batch, jax.random.PRNGKey(0))
    plain, _ = jax.jit(fusion_trainer.make_loss_fn(model, config, image_tokenizer=random_vq()))(
        params, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(loss, plain, rtol=1e-6)  # 2 more padding tokens change nothing
    assert float(metrics["infilled"]) == 0.0
    config.loss.infill_probability = 1.0
    moved, metrics = jax.jit(trainer.make_loss_fn(model, config, image_tokenizer=random_vq()))(
        params, batch, jax.random.PRNGKey(0))
    assert float(metrics["infilled"]) == 1.0 and abs(float(moved) - float(plain)) > 1e-4


@pytest.mark.parametrize("stage", [1, 2])
def test_one_train_step_of_each_stage_is_finite_with_a_gradient(stage, monkeypatch):
    monkeypatch.setattr(early_fusion_generation, "load_image_tokenizer",
                        lambda config: random_vq())
    config = small_config(stage)
    config.loss.update(caption_first=0.5, infill_probability=0.5, text_to_image=0.5)
    docs = stage1_docs() if stage == 1 else instruction_docs()
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.logical_rules(config)
    _, state, _, step = loop.build(config, trainer, tokenizer().vocab_size, mesh, rules)
    _, metrics = step(state, parallel.global_batch(batch_of(docs, config), mesh, rules))
    assert np.isfinite(float(metrics["train/loss"])) and float(metrics["train/loss"]) > 1.0
    assert float(metrics["train/grad_norm"]) > 0


@pytest.mark.slow
def test_both_stages_train_through_the_cli_and_draw(tmp_path):
    vq_dir, one, two = (str(tmp_path / name) for name in ("vq", "stage1", "stage2"))
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "")

    def run(*args):
        result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    run("-m", "vlm_jax.main", "--config=configs/vq.py:tiny,steps=2,batch=4,image_size=16",
        f"--workdir={vq_dir}")
    evals = ["--config.evals.names=('captioning',)", "--config.evals.captioning_size=4"]
    run("-m", "vlm_jax.main", f"--config=configs/cm3leon.py:tiny,stage=1,vq={vq_dir},"
        "retrieved=0,steps=2,batch=4,bank_size=64", f"--workdir={one}", *evals)
    run("-m", "vlm_jax.main", f"--config=configs/cm3leon.py:tiny,stage=2,stage1={one},steps=2,"
        "batch=4", f"--workdir={two}", *evals)
    run("-m", "vlm_jax.early_fusion_generation", f"--workdir={two}", "--prompts=1",
        "--samples=1")
    with open(os.path.join(two, "text_to_image.json")) as f:
        report = json.load(f)
    assert os.path.exists(report["grid"])
    assert all(0.0 <= r["colour_accuracy"] <= 1.0 for r in report["results"].values())
    with open(os.path.join(two, "results.json")) as f:
        assert "captioning/val/cider" in json.load(f)
