"""The FLAVA trainer: ITM caption swaps, MIM targets, the masked loss terms against NumPy, the
loss function of the :tiny config (terms switch off by weight), and the matcher."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import flava as flava_config
from configs import visualbert as visualbert_config
from vlm_jax import mim_targets, models, parallel
from vlm_jax.losses import masking as masking_losses
from vlm_jax.trainers import flava as flava_trainer


def test_swap_captions_takes_another_row_at_the_rate():
    tokens = np.arange(64 * 3, dtype=np.int32).reshape(64, 3)  # row r's caption is unique
    texts, labels = flava_trainer.swap_captions(jax.random.key(0), jnp.asarray(tokens), 0.25)
    texts, labels = np.asarray(texts), np.asarray(labels)
    own = (texts == tokens).all(1)
    np.testing.assert_array_equal(own, labels == 1)  # label 0 exactly where swapped
    # A swapped row holds another row's caption, never its own.
    assert all(any((texts[r] == tokens[j]).all() for j in range(64) if j != r)
               for r in np.flatnonzero(labels == 0))
    # 25% of 64 rows: 16 expected (sd ~3.5).
    assert 6 <= (labels == 0).sum() <= 26


def test_masked_losses_equal_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (3, 5))
    mask = rng.random((3, 5)) < 0.5
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    loss, _ = masking_losses.masked_cross_entropy(logits, targets, mask)
    np.testing.assert_allclose(loss, nll[mask].mean(), rtol=1e-6)
    predicted = rng.standard_normal((3, 5, 4)).astype(np.float32)
    pixels = rng.standard_normal((3, 5, 4)).astype(np.float32)
    mse, _ = masking_losses.masked_pixel_mse(predicted, pixels, mask)
    np.testing.assert_allclose(mse, ((predicted - pixels) ** 2).mean(-1)[mask].mean(), rtol=1e-6)


def test_patchify_and_kmeans_codes():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    patches = mim_targets.patchify(jnp.asarray(images), 4)
    # Patch 1 of image 0 is rows 0..3, columns 4..7 (row-major patch order).
    np.testing.assert_array_equal(np.asarray(patches[0, 1]), images[0, 0:4, 4:8].reshape(-1))
    np.testing.assert_array_equal(np.asarray(mim_targets.unpatchify(patches, 4)), images)
    # k-means on three well-separated blobs finds them; codes are the NumPy nearest centroid.
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + 0.1 * rng.standard_normal((50, 2)) for c in centres])
    found = mim_targets.fit_kmeans(points, 3, seed=0)
    distance = np.linalg.norm(found[:, None] - centres[None], axis=-1)  # [found, true]
    np.testing.assert_array_equal(np.sort(distance.argmin(1)), [0, 1, 2])
    assert distance.min(1).max() < 0.1
    x = np.asarray(mim_targets.normalized_patches(jnp.asarray(images), 4))
    centroids = x.reshape(-1, 48)[:5]
    codes = np.asarray(mim_targets.kmeans_codes(jnp.asarray(images), jnp.asarray(centroids), 4))
    brute = ((x[:, :, None] - centroids[None, None]) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(codes, brute)
    with pytest.raises(ValueError, match="must be one of"):
        mim_targets.make_targets("dalle", 4)


def tiny(config_module, **overrides):
    config = config_module.get_config("tiny")
    config.batch_size = 4
    config.mim.fit_images = 8
    config.mim.num_codes = config.model.mim_dim = 16
    for key, value in overrides.items():
        config.loss[key] = value
    return config


def run_loss(config):
    from vlm_jax.data import tokenizer as tokenizers

    tokenizer = tokenizers.load_tokenizer(config.data)
    model = models.build_model(config.model, tokenizer.vocab_size)
    params = model.init(jax.random.key(0), **flava_trainer.init_batch(config))["params"]
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8),
             "text_tokens": np.asarray(tokenizer.encode(
                 ["a red circle", "two blue squares", "a green triangle left of a circle",
                  "one small square"], config.data.text_length), np.int32)}
    loss_fn = flava_trainer.make_loss_fn(model, config)
    loss, metrics = jax.jit(loss_fn)(params, batch, jax.random.key(3))
    return model, params, tokenizer, batch, float(loss), jax.device_get(metrics)


def test_tiny_loss_is_the_weighted_sum_and_terms_switch_off():
    config = tiny(flava_config, mim_weight=2.0, mlm_weight=0.0)
    _, _, _, _, loss, metrics = run_loss(config)
    present = {k[:-5] for k in metrics if k.endswith("_loss")}
    assert present == {"contrastive", "mim", "mmm_image", "mmm_text", "itm"}
    expected = sum(metrics[f"{name}_loss"] * (2.0 if name == "mim" else 1.0) for name in present)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # At init the code / token terms sit near log(#classes): nothing has leaked the targets.
    assert abs(metrics["mim_loss"] - np.log(16)) < 1.5
    assert abs(metrics["itm_loss"] - np.log(2)) < 0.5


def test_single_stream_runs_mlm_and_itm_only_and_serves_a_matcher():
    config = tiny(visualbert_config)
    model, params, tokenizer, batch, loss, metrics = run_loss(config)
    assert {k for k in metrics if k.endswith("_loss")} == {"mmm_text_loss", "itm_loss"}
    assert model.image["depth"] == model.text["depth"] == 0
    mesh = parallel.make_mesh(config.mesh)
    matcher = flava_trainer.make_matcher(model, params, tokenizer, mesh, config)
    scores = matcher.match(batch["image"][:3], batch["text_tokens"][:3])
    logits = model.apply({"params": params}, batch["image"][:3], batch["text_tokens"][:3])[
        "itm_logits"]
    # Unmasked inputs: the ITM head's log-odds.
    np.testing.assert_allclose(scores, np.asarray(logits[:, 1] - logits[:, 0]), atol=1e-5)
    assert scores.shape == (3,)


def test_pixel_target_reconstructor_unnormalises_the_mim_head_and_codes_refuse_it():
    config = tiny(flava_config)
    config.mim.target, config.model.mim_dim = "pixels", 8 * 8 * 3
    config.evals.names = ("reconstruction",)
    from vlm_jax.data import tokenizer as tokenizers

    tokenizer = tokenizers.load_tokenizer(config.data)
    model = models.build_model(config.model, tokenizer.vocab_size)
    params = model.init(jax.random.key(0), **flava_trainer.init_batch(config))["params"]
    mesh = parallel.make_mesh(config.mesh)
    reconstructor = flava_trainer.make_reconstructor(model, params, tokenizer, mesh, config)
    patch_mask = np.asarray(reconstructor.draw_masks(jax.random.key(1), 2))
    assert (patch_mask.sum(1) == 6).all()  # BEiT blocks: 6 of the 4 x 4 patches
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    rebuilt = reconstructor.reconstruct(images, ["a red circle"] * 2, patch_mask)
    # The masked pass of the whole model, scaled back with each true patch's mean and std.
    tokens = np.asarray(tokenizer.encode(["a red circle"] * 2, config.data.text_length))
    normalised = np.asarray(model.apply({"params": params}, images, tokens, patch_mask)[
        "mim_logits"], np.float64)
    pixels = np.asarray(mim_targets.patchify(images / 127.5 - 1.0, 8))
    mean, std = pixels.mean(-1, keepdims=True), np.sqrt(pixels.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(rebuilt, normalised * std + mean, atol=1e-5)
    config.mim.target = "kmeans"
    with pytest.raises(ValueError, match="eval 'reconstruction' needs FLAVA's MIM head to "
                                         "predict pixels, but mim.target='kmeans'"):
        flava_trainer.make_loss_fn(model, config)
