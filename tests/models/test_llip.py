"""Llip: caption-conditioned scores equal a per-pair reference, K = 1 reduces to SigLIP, the
ViT carries the mixture tokens, training lowers the loss, and the evals run on its Scorer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import configlib, evals, models, optim, parallel
from vlm_jax.data import tokenizer as tokenizers
from vlm_jax.losses import contrastive
from vlm_jax.models.llip import ATTENTION_KERNELS, conditioned_similarity, llip_logits
from vlm_jax.models.two_tower import l2_normalize
from vlm_jax.models.vit import ViT
from vlm_jax.train_state import create_train_state, make_train_step
from vlm_jax.trainers import llip as llip_trainer

BATCH, SIZE, LENGTH = 8, 16, 12


def _kernels(rng, width, identity=()):
    return {name: jnp.eye(width) if name in identity
            else jnp.asarray(rng.normal(size=(width, width)) / np.sqrt(width), jnp.float32)
            for name in ATTENTION_KERNELS}


def _reference_similarity(mixture, text_emb, kernels, temperature):
    """cos(h_{i|j}, y_j) one pair at a time in float64, h built explicitly."""
    mixture, text_emb = np.asarray(mixture, np.float64), np.asarray(text_emb, np.float64)
    w = {name: np.asarray(kernel, np.float64) for name, kernel in kernels.items()}
    scores = np.zeros((mixture.shape[0], text_emb.shape[0]))
    for i, tokens in enumerate(mixture):  # tokens [K, E]
        for j, y in enumerate(text_emb):
            logits = (tokens @ w["key"]) @ (y @ w["query"]) / temperature  # [K]
            alpha = np.exp(logits - logits.max())
            alpha /= alpha.sum()
            h = (alpha @ (tokens @ w["value"])) @ w["out"]
            scores[i, j] = h @ y / np.sqrt(h @ h + 1e-6)
    return scores


def test_conditioned_similarity_equals_a_per_pair_reference():
    rng = np.random.default_rng(0)
    mixture = jnp.asarray(rng.normal(size=(3, 4, 16)), jnp.float32)  # [Bi, K, E]
    text_emb = l2_normalize(jnp.asarray(rng.normal(size=(5, 16)), jnp.float32))  # [Bt, E]
    kernels = _kernels(rng, 16)
    for temperature in (0.5, 5.0):
        got = conditioned_similarity(mixture, text_emb, kernels, temperature)
        want = _reference_similarity(mixture, text_emb, kernels, temperature)
        assert got.shape == (3, 5)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The captions really condition the image: with K > 1 an image's vector differs per caption.
    assert np.ptp(_reference_similarity(mixture, text_emb, kernels, 0.5)) > 0.1


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_one_mixture_token_with_identity_value_and_out_is_siglip(loss):
    rng = np.random.default_rng(1)
    mixture = jnp.asarray(rng.normal(size=(6, 1, 8)), jnp.float32)
    text_emb = l2_normalize(jnp.asarray(rng.normal(size=(6, 8)), jnp.float32))
    kernels = _kernels(rng, 8, identity=("value", "out"))
    scale, bias = jnp.float32(10.0), jnp.float32(-3.0)

    def llip_loss(mixture, text_emb, scale, bias):
        logits = llip_logits(mixture, text_emb, kernels, 5.0, scale, bias)
        return contrastive.LOSSES_ON_LOGITS[loss](logits)[0]

    def reference_loss(mixture, text_emb, scale, bias):
        image_emb = l2_normalize(mixture[:, 0])
        if loss == "sigmoid":
            return contrastive.sigmoid_contrastive_loss(image_emb, text_emb, scale, bias)[0]
        return contrastive.softmax_contrastive_loss(image_emb, text_emb, scale)[0]

    args = (mixture, text_emb, scale, bias)
    got, got_grads = jax.value_and_grad(llip_loss, argnums=(0, 1, 2, 3))(*args)
    want, want_grads = jax.value_and_grad(reference_loss, argnums=(0, 1, 2, 3))(*args)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for name, g, w in zip(("mixture", "text", "scale", "bias"), got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=name)


def test_vit_carries_extra_tokens_apart_from_the_patch_tokens():
    vit = ViT(width=32, depth=1, num_heads=4, mlp_dim=64, patch_size=4, pool="gap",
              num_extra_tokens=3)
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    params = vit.init(jax.random.PRNGKey(0), images)
    pooled, extras = vit.apply(params, images)
    assert nn.unbox(params)["params"]["extra_tokens"].shape == (1, 3, 32)
    assert extras["extra_tokens"].shape == (2, 3, 32) and extras["tokens"].shape == (2, 16, 32)
    np.testing.assert_allclose(pooled, extras["tokens"].mean(1), rtol=1e-6)
    # Distinct learned tokens give distinct outputs, and these depend on the image.
    assert np.abs(extras["extra_tokens"][:, 0] - extras["extra_tokens"][:, 1]).max() > 1e-3
    assert np.abs(extras["extra_tokens"][0] - extras["extra_tokens"][1]).max() > 1e-3


def _tiny_config(loss="sigmoid"):
    config = configlib.load_config(f"configs/llip.py:tiny,loss={loss},mixture_tokens=3")
    for tower in (config.model.image, config.model.text):
        tower.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    config.model.image.patch_size = 8
    config.model.embed_dim = 32
    return config


def test_model_scores_every_pair_in_one_batched_call():
    config = _tiny_config()
    model = models.build_model(config.model, 64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    tokens = rng.integers(1, 64, (5, LENGTH)).astype(np.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), images[:1], tokens[:1])["params"]
    mixture, text_emb, extras = jax.jit(model.apply)({"params": params}, images, tokens)
    assert mixture.shape == (4, 3, 32) and text_emb.shape == (5, 32)
    assert set(extras["attention"]) == set(ATTENTION_KERNELS)
    batched = jax.jit(lambda p, m, y: model.apply({"params": p}, m, y, method=model.similarity))(
        params, mixture, text_emb)
    want = _reference_similarity(mixture, text_emb, extras["attention"], config.model.temperature)
    np.testing.assert_allclose(batched, want, rtol=1e-5, atol=1e-6)


def _train(config, steps, vocab_size=64):
    """Losses of `steps` real train steps of a tiny Llip on one fixed batch; and the state."""
    model = models.build_model(config.model, vocab_size)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 64, (BATCH, LENGTH)).astype(np.int32)
    tokens[:, 9:] = 0
    batch = {"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
             "text_tokens": tokens}
    config.optim.update(lr=3e-3, warmup_steps=2)
    tx, schedule = optim.make_optimizer(config.optim, steps)
    mesh = parallel.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    rules = parallel.logical_rules(config)
    init = lambda rng: model.init(
        rng, jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8), jnp.zeros((1, LENGTH), jnp.int32))["params"]
    losses = []
    with nn.logical_axis_rules(rules):
        state, shardings, _ = create_train_state(init, tx, 0, mesh, rules)
        step = make_train_step(llip_trainer.make_loss_fn(model, config), tx, schedule, 1,
                               shardings, mesh)
        for _ in range(steps):
            state, metrics = step(state, parallel.global_batch(batch, mesh))
            losses.append(float(metrics["train/loss"]))
    return model, state, mesh, np.array(losses)


@pytest.fixture(scope="module")
def trained():
    """A tiny sigmoid Llip after 25 steps on one batch, with the world tokenizer's vocabulary."""
    config = _tiny_config()
    config.data.text_length = LENGTH
    tokenizer = tokenizers.world_tokenizer(vocab_size=config.data.vocab_size)
    model, state, mesh, losses = _train(config, steps=25, vocab_size=tokenizer.vocab_size)
    return config, tokenizer, model, state, mesh, losses


def test_training_lowers_the_loss(trained):
    *_, state, _, losses = trained
    assert np.all(np.isfinite(losses)) and int(state.step) == 25
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_training_with_the_softmax_loss_lowers_it():
    _, _, _, losses = _train(_tiny_config("softmax"), steps=25)
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses


def test_sigmoid_loss_needs_a_bias():
    config = _tiny_config()
    config.model.logit_bias_init = None
    with pytest.raises(ValueError, match="logit_bias_init"):
        llip_trainer.make_loss_fn(None, config)


def test_evals_run_on_the_llip_scorer(trained):
    config, tokenizer, model, state, mesh, _ = trained
    scorer = llip_trainer.make_scorer(model, state.params, tokenizer, mesh, config)
    eval_config = evals.default_eval_config()
    eval_config.update(batch_size=16, zeroshot_size=16, retrieval_size=16, probe_size=8,
                       image_size=SIZE)
    mixture = scorer.encode_images(np.zeros((16, SIZE, SIZE, 3), np.uint8))
    assert mixture.shape == (16, 3, 32)
    results = evals.run_evals(["zeroshot", "retrieval", "compositional"], scorer, eval_config)
    assert results and all(np.isfinite(v) for v in results.values())
    assert any(k.startswith("zeroshot/") for k in results)


def test_llip_takes_a_bert_text_tower():
    """`model.text.type = "bert"` (e.g. MiniLM) works for Llip as for TwoTower."""
    from configs import common

    config = _tiny_config()
    config.model.text = common.tower("", type="bert", width=32, depth=1, num_heads=2,
                                     mlp_dim=64, max_len=16, pool="mean", pad_id=0)
    model = models.build_model(config.model, 64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    tokens = rng.integers(1, 64, (2, 8)).astype(np.int32)
    variables = model.init(jax.random.PRNGKey(0), images, tokens)
    assert "type_embedding" in nn.unbox(variables)["params"]["text_tower"]  # BERT's
    mixture, text_emb, _ = model.apply(variables, images, tokens)
    assert mixture.shape == (2, 3, 32)
    np.testing.assert_allclose(np.linalg.norm(text_emb, axis=1), 1.0, rtol=1e-5)
