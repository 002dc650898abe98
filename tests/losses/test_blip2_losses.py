"""BLIP-2 stage 1's loss terms against torchmultimodal's `blip2_losses` (golden fixture
tests/fixtures/blip2_losses.npz, made by tests/fixtures/make_blip2_loss_fixture.py) and NumPy:
ITC (max over queries, label smoothing 0.1) on every sharded variant, ITG (label-smoothed
shifted cross-entropy), ITM on the hard negatives torchmultimodal drew, and the hard-negative
sampler's distribution.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from vlm_jax import parallel
from vlm_jax.convert import hf_blip2
from vlm_jax.convert import torch_layout as tl
from vlm_jax.losses import blip2 as blip2_losses
from vlm_jax.losses import generative, sharded
from vlm_jax.models import blip2

FIXTURES = Path(__file__).parents[1] / "fixtures"
GOLDEN = np.load(FIXTURES / "blip2_losses.npz")
SMOOTHING = 0.1


def numpy_smoothed_ce(logits: np.ndarray, labels: np.ndarray, smoothing: float) -> np.ndarray:
    """Per-row torch cross_entropy(label_smoothing=smoothing), float64."""
    logits = logits.astype(np.float64)
    top = logits.max(1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    nll = -log_probs[np.arange(len(labels)), labels]
    return (1 - smoothing) * nll - smoothing * log_probs.mean(1)


def test_itc_equals_torchmultimodal_and_numpy():
    queries, texts = GOLDEN["query_features"], GOLDEN["text_features"]
    scale = 1.0 / GOLDEN["temp"]
    logits = blip2.max_query_score(jnp.asarray(queries), jnp.asarray(texts), {"scale": scale})
    np.testing.assert_allclose(logits, GOLDEN["itc_logits"], rtol=1e-5, atol=1e-5)
    loss, _ = sharded.sharded_pair_loss("softmax", queries, texts, blip2.max_query_score,
                                        {"scale": scale}, None, "gspmd",
                                        label_smoothing=SMOOTHING)
    np.testing.assert_allclose(loss, GOLDEN["itc_loss"], rtol=1e-5)
    # NumPy: the same from the definition (max over queries, both directions).
    sims = np.einsum("iqe,te->itq", queries, texts).max(-1) * scale
    labels = np.arange(len(sims))
    reference = 0.5 * (numpy_smoothed_ce(sims, labels, SMOOTHING).mean()
                       + numpy_smoothed_ce(sims.T, labels, SMOOTHING).mean())
    np.testing.assert_allclose(loss, reference, rtol=1e-5)
    unsmoothed, _ = sharded.sharded_pair_loss("softmax", queries, texts, blip2.max_query_score,
                                              {"scale": scale}, None, "gspmd")
    assert abs(float(unsmoothed) - float(loss)) > 1e-2  # smoothing is not a no-op here


@pytest.mark.parametrize("variant,bidirectional", [("gather", False), ("ring", False),
                                                   ("ring", True)])
def test_itc_sharded_variants_equal_gspmd_loss_and_gradients(variant, bidirectional):
    batch, num_queries, dim = 24, 3, 8
    rng = np.random.default_rng(1)
    normalize = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    queries = np.float32(normalize(rng.normal(size=(batch, num_queries, dim))))
    texts = np.float32(normalize(queries[:, 0] + rng.normal(size=(batch, dim))))
    mesh = parallel.make_mesh(dict(data=8, fsdp=1, tensor=1), jax.devices()[:8])

    def loss(variant, bidirectional, q, t, scale):
        return sharded.sharded_pair_loss("softmax", q, t, blip2.max_query_score,
                                         {"scale": scale}, mesh, variant,
                                         bidirectional=bidirectional, label_smoothing=SMOOTHING)

    rows = NamedSharding(mesh, PartitionSpec(parallel.BATCH_AXES))
    args = (jax.device_put(queries, rows), jax.device_put(texts, rows), np.float32(7.0))
    grad = lambda v, b: jax.jit(jax.value_and_grad(
        lambda *a: loss(v, b, *a)[0], argnums=(0, 1, 2)))(*args)
    want_value, want_grads = grad("gspmd", False)
    value, grads = grad(variant, bidirectional)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(want_grads[2])) > 1e-4  # the scale's gradient is not trivially 0


def test_itg_equals_torchmultimodal():
    ids, scores = GOLDEN["itg_ids"], GOLDEN["itg_scores"]
    # Ours: text_tokens exclude the leading task token; logits[:, t] predicts text_tokens[:, t].
    targets = jnp.asarray(ids[:, 1:])
    loss, _ = generative.caption_loss(jnp.asarray(scores[:, :-1]), targets, targets != 0,
                                      SMOOTHING)
    np.testing.assert_allclose(loss, GOLDEN["itg_loss"], rtol=1e-5)
    plain, _ = generative.caption_loss(jnp.asarray(scores[:, :-1]), targets, targets != 0)
    assert abs(float(plain) - float(loss)) > 1e-3  # 100x the tolerance: smoothing counts


def test_itm_on_torchmultimodal_negatives_equals_its_loss():
    from safetensors.numpy import load_file

    record = json.loads((FIXTURES / "blip2_tiny" / "config.json").read_text())
    stored = np.load(FIXTURES / "blip2_tiny" / "expected.npz")
    weights = tl.Weights(hf_blip2.as_float32(load_file(str(FIXTURES / "blip2_tiny" /
                                                             "model.safetensors"))))
    kwargs, qformer_params = hf_blip2.convert_qformer(weights, record["qformer_config"])
    params = {"qformer": qformer_params, **hf_blip2.convert_retrieval_heads(weights),
              "logit_scale": jnp.zeros(())}
    model = blip2.Blip2(image=dict(width=8, depth=1, num_heads=1, mlp_dim=8, patch_size=8),
                        qformer_sizes=kwargs, embed_dim=record["image_text_hidden_size"],
                        logit_scale_init=0.0, cls_id=record["cls_id"])
    features, tokens = stored["image_features"], stored["text_tokens"]
    pair_features, pair_tokens = blip2_losses.matching_batch(
        jnp.asarray(features), jnp.asarray(tokens), jnp.asarray(GOLDEN["itm_negative_text"]),
        jnp.asarray(GOLDEN["itm_negative_image"]))
    logits = model.apply({"params": params}, pair_features, pair_tokens, method=model.match)
    loss, metrics = blip2_losses.itm_loss(logits)
    np.testing.assert_allclose(loss, GOLDEN["itm_loss"], rtol=1e-5)
    # NumPy: mean 2-way CE with labels 1 then 0, 0.
    labels = np.array([1] * 3 + [0] * 6)
    np.testing.assert_allclose(loss, numpy_smoothed_ce(np.asarray(logits), labels, 0.0).mean(),
                               rtol=1e-5)
    assert 0.0 <= float(metrics["itm_accuracy"]) <= 1.0


def test_hard_negatives_follow_the_softmax_without_the_pair():
    logits = jnp.asarray([[3.0, 1.0, 0.0, -1.0], [0.5, 2.0, 2.0, 0.0],
                          [1.0, 0.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    draws = 20_000
    keys = jax.random.split(jax.random.PRNGKey(0), draws)
    texts, images = jax.vmap(lambda k: blip2_losses.sample_hard_negatives(k, logits))(keys)
    for negatives, rows in ((np.asarray(texts), np.asarray(logits)),
                            (np.asarray(images), np.asarray(logits).T)):
        for i in range(4):
            expected = np.exp(rows[i]) * (np.arange(4) != i)
            expected /= expected.sum()
            counts = np.bincount(negatives[:, i], minlength=4) / draws
            assert counts[i] == 0.0  # never the pair itself
            # 5 standard errors of a binomial proportion at 20k draws
            np.testing.assert_allclose(counts, expected, atol=5 * 0.5 / np.sqrt(draws))
