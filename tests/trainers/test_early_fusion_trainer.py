"""The early-fusion trainer: its loss equals a NumPy reference built from the documents' own
texts and the VQ's codes (cross-entropy over text and image targets + 1e-5 log Z^2), caption-
first documents appear at the configured rate, the config refuses a VQ of other sizes, and
(slow) a whole run trains, captions and writes its text-to-image grid through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.test_early_fusion import (
    IMAGE_SIZE,
    documents,
    random_vq,
    small_config,
    tiny_lm,
    tokenizer,
    vocab,
)
from vlm_jax.trainers import early_fusion as trainer

ROOT = Path(__file__).parents[2]


def batch_of(n):
    config = small_config()
    docs, rows = documents(n, config)
    m = config.data.max_images
    images = np.zeros((n, m, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for b, doc in enumerate(docs):
        images[b, :len(doc["images"])] = doc["images"]
    keys = ("text_tokens", "segment_ids", "image_positions", "image_valid")
    batch = {key: np.stack([r[key] for r in rows]) for key in keys}
    return config, docs, {**batch, "images": images}


def numpy_loss(logits, tokens, pad_id, z_weight):
    logits = np.asarray(logits, np.float64)
    targets, weights = tokens[:, 1:], tokens[:, 1:] != pad_id
    log_z = np.log(np.exp(logits).sum(-1))
    log_p = np.take_along_axis(logits, targets[..., None], -1)[..., 0] - log_z
    ce = -(log_p * weights).sum() / weights.sum()
    return ce + z_weight * (log_z**2 * weights).sum() / weights.sum(), ce


def test_loss_is_next_token_cross_entropy_plus_z_loss_over_the_fused_documents():
    config, docs, batch = batch_of(4)
    config.loss.caption_first = 0.0  # image first: the fused order is the format's
    model, params = tiny_lm()
    loss_fn = trainer.make_loss_fn(model, config, image_tokenizer=random_vq())
    loss, metrics = jax.jit(loss_fn)(params, jax.tree_util.tree_map(jnp.asarray, batch),
                                     jax.random.PRNGKey(0))
    v, t = vocab(), random_vq()
    expected_tokens = []
    for doc in docs:
        codes = t.tokenize(np.stack(doc["images"]))  # [k, 16]
        ids = [v.bos_id]
        for k, text in enumerate(doc["texts"]):
            ids += [v.boi_id, *(codes[k] + v.code_offset), v.eoi_id]
            ids += tokenizer().text_ids(text)
        ids += tokenizer().text_ids(doc["closing"]) + [v.eos_id]
        expected_tokens.append(ids + [v.pad_id] * (config.data.text_length - len(ids)))
    tokens = np.asarray(expected_tokens)
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x, valid=x != v.pad_id))(
        params, jnp.asarray(tokens[:, :-1]))
    total, ce = numpy_loss(logits, tokens, v.pad_id, 1e-5)
    np.testing.assert_allclose(metrics["cross_entropy"], ce, rtol=1e-5)
    np.testing.assert_allclose(loss, total, rtol=1e-5)
    assert float(loss - metrics["cross_entropy"]) > 0  # the z-loss term is in
    # Image and text targets split the cross-entropy by token counts.
    is_code = (tokens[:, 1:] >= v.code_offset) & (tokens[:, 1:] != v.pad_id)
    text = (tokens[:, 1:] != v.pad_id) & ~is_code
    split = (metrics["image_loss"] * is_code.sum() + metrics["text_loss"] * text.sum()) / (
        is_code.sum() + text.sum())
    np.testing.assert_allclose(split, ce, rtol=1e-5)


def test_caption_first_rate_follows_the_config():
    config, _, batch = batch_of(2)
    v = vocab()
    flips = []
    for seed in range(40):
        tokens = np.asarray(trainer.fused_tokens(
            random_vq(), v, jax.tree_util.tree_map(jnp.asarray, batch),
            jax.random.bernoulli(jax.random.PRNGKey(seed), 0.5, (2,))))
        flips += list(tokens[:, 1] != v.boi_id)  # a caption, not an image, follows BOS
    assert 0.3 < np.mean(flips) < 0.7


def test_a_vq_of_other_sizes_is_refused_with_the_fix():
    config = small_config()
    config.data.image_tokens = 64
    model, _ = tiny_lm()
    with pytest.raises(ValueError, match=r"data.image_tokens=64 \(the VQ run needs 16\)"):
        trainer.make_loss_fn(model, config, image_tokenizer=random_vq())


@pytest.mark.slow
def test_vq_then_chameleon_train_caption_and_draw(tmp_path):
    vq_dir, run_dir = str(tmp_path / "vq"), str(tmp_path / "chameleon")
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")

    def run(*args):
        result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    run("-m", "vlm_jax.main", "--config=configs/vq.py:tiny,steps=2,batch=4,image_size=16",
        f"--workdir={vq_dir}")
    run("-m", "vlm_jax.main", f"--config=configs/chameleon.py:tiny,vq={vq_dir},steps=3,batch=4",
        f"--workdir={run_dir}", "--config.evals.names=('captioning',)",
        "--config.evals.captioning_size=4", "--config.model.depth=1")
    run("-m", "vlm_jax.early_fusion_generation", f"--workdir={run_dir}", "--prompts=2",
        "--samples=2")
    with open(os.path.join(run_dir, "text_to_image.json")) as f:
        report = json.load(f)
    assert os.path.exists(report["grid"])
    assert set(report["results"]) == {f"{prompts}/{name}" for prompts in ("seen", "heldout")
                                      for name in ("no_guidance", "guidance_3")}
    assert all(0.0 <= r["colour_accuracy"] <= 1.0 for r in report["results"].values())
