"""MaskVLM: each of its four terms against a NumPy reference written here, the MIM path reads
the text and the MLM path the image, raw-pixel masking hides the masked pixels, and the
trainer serves a Scorer and a Matcher."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import maskvlm as maskvlm_config
from vlm_jax import evals, masking, models, trainers
from vlm_jax.data import tokenizer as tokenizers
from vlm_jax.models.maskvlm import mask_patches
from vlm_jax.trainers import maskvlm as trainer

SIZE, PATCH, LENGTH, BATCH = 16, 8, 8, 4


def tiny_config():
    config = maskvlm_config.get_config("tiny")
    config.data.image_size, config.data.text_length = SIZE, LENGTH
    for tower in (config.model.image, config.model.text):
        tower.update(width=32, mlp_dim=64, depth=1, num_heads=2)
    config.model.cross = dict(depth=1, num_heads=2, mlp_dim=64)
    config.model.decoder_depth = 1
    config.model.embed_dim = 16
    return config


@pytest.fixture(scope="module")
def setup():
    config = tiny_config()
    tokenizer = tokenizers.load_tokenizer(config.data)
    model = models.build_model(config.model, tokenizer.vocab_size)
    params = model.init(jax.random.PRNGKey(0), **trainer.init_batch(config))["params"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    tokens = tokenizer.encode(["a red circle", "a blue square left of a red circle",
                               "two green triangles", "a red circle"], LENGTH)
    return config, tokenizer, model, params, images, tokens


def numpy_patches(images):
    """[B, S, S, 3] uint8 -> [B, N, p*p*3] in [-1, 1], patches in row-major order, written out
    with loops (not the code's reshape)."""
    pixels = images.astype(np.float64) / 127.5 - 1.0
    grid = SIZE // PATCH
    return np.stack([np.stack([pixels[b, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH]
                               .reshape(-1) for r in range(grid) for c in range(grid)])
                     for b in range(len(images))])


def numpy_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_every_term_equals_its_numpy_reference(setup):
    config, tokenizer, model, params, images, tokens = setup
    loss_fn = trainer.make_loss_fn(model, config)
    rng = jax.random.PRNGKey(3)
    loss, metrics = jax.jit(loss_fn)(params, {"image": images, "text_tokens": tokens}, rng)

    # The same draws as the loss function (masking.py is tested on its own).
    k_patch, k_text, k_negatives = jax.random.split(rng, 3)
    patch_mask = np.asarray(masking.random_patch_mask(k_patch, BATCH, 4, 0.6))
    mask_id, avoid = trainer.mask_token_ids(config)
    maskable = (tokens != tokenizer.pad_id) & (tokens != tokenizer.eos_id)
    masked_tokens, mlm_mask = masking.mlm_corrupt(k_text, jnp.asarray(tokens), maskable, 0.3,
                                                  mask_id, model.vocab_size, avoid)
    out = jax.device_get(model.apply({"params": params}, images, tokens, patch_mask,
                                     masked_tokens, k_negatives,
                                     method=trainer.pretrain_outputs))
    assert patch_mask.sum() == BATCH * round(0.6 * 4)

    # ITC: symmetric InfoNCE of the clean embeddings.
    logits = out["logit_scale"] * out["image_emb"].astype(np.float64) @ out["text_emb"].T
    diagonal = np.arange(BATCH)
    itc = -0.5 * (numpy_log_softmax(logits)[diagonal, diagonal].mean()
                  + numpy_log_softmax(logits.T)[diagonal, diagonal].mean())
    # ITM: B positives then 2B negatives; a negative is never a same-caption pair.
    labels = np.r_[np.ones(BATCH), np.zeros(2 * BATCH)].astype(int)
    np.testing.assert_array_equal(out["itm_labels"], labels)
    weights = out["itm_weights"].astype(np.float64)
    nll = -numpy_log_softmax(out["itm_logits"].astype(np.float64))[np.arange(3 * BATCH), labels]
    itm = np.sum(nll * weights) / weights.sum()
    # MIM: mean over masked patches of the per-patch mean squared pixel error.
    per_patch = np.mean((out["pixels"] - numpy_patches(images)) ** 2, axis=-1)
    mim = per_patch[patch_mask].mean()
    # MLM: CE of the original token at the chosen positions.
    mlm_mask = np.asarray(mlm_mask)
    assert mlm_mask.any() and not mlm_mask[~maskable].any()
    log_probs = numpy_log_softmax(out["token_logits"].astype(np.float64))
    token_nll = -np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    mlm = token_nll[mlm_mask].mean()

    for name, expected in (("itc", itc), ("itm", itm), ("mim", mim), ("mlm", mlm)):
        assert float(metrics[f"train/{name}_loss"] if f"train/{name}_loss" in metrics
                     else metrics[f"{name}_loss"]) == pytest.approx(expected, rel=1e-5), name
    assert float(loss) == pytest.approx(itc + itm + mim + mlm, rel=1e-5)


def test_hard_negative_pairs_are_scored_as_their_own_pairs(setup):
    """The ITM rows 2..3 are (image i, a drawn text) and (a drawn image, text j): scoring
    those pairs directly with `match` gives the same logits."""
    config, _, model, params, images, tokens = setup
    rng = jax.random.PRNGKey(5)
    no_mask = np.zeros((BATCH, 4), bool)
    out = model.apply({"params": params}, images, tokens, no_mask, jnp.asarray(tokens), rng,
                      method=trainer.pretrain_outputs)
    itm_logit = np.asarray(out["itm_logits"][:, 1] - out["itm_logits"][:, 0])
    direct = np.asarray(model.apply({"params": params}, images, tokens, method=model.match))
    np.testing.assert_allclose(itm_logit[:BATCH], direct, rtol=1e-5, atol=1e-5)
    # Each negative row matches exactly one (image, text) combination of the batch.
    all_pairs = np.asarray(jax.vmap(lambda t: model.apply(
        {"params": params}, images, jnp.repeat(t[None], BATCH, 0), method=model.match))(
        jnp.asarray(tokens)))  # [text, image]
    for row in range(BATCH, 3 * BATCH):
        assert np.min(np.abs(all_pairs - itm_logit[row])) < 1e-4


def test_mim_reads_the_text_and_mlm_reads_the_image(setup):
    _, _, model, params, images, tokens = setup
    variables = {"params": params}

    def encode(images_in, tokens_in):
        _, image_extras = model.apply(variables, images_in, method=model.encode_image)
        _, text_extras = model.apply(variables, tokens_in, method=model.encode_text)
        return image_extras["tokens"], text_extras

    patch_mask = np.array([[True, True, False, True]] * BATCH)
    masked = mask_patches(jnp.asarray(images), jnp.asarray(patch_mask), PATCH)
    image_tokens, text = encode(masked, tokens)
    rebuilt = model.apply(variables, image_tokens, text["tokens"], text["text_mask"],
                          method=model.reconstruct_image)
    _, other_text = encode(masked, tokens[::-1])
    rebuilt_other = model.apply(variables, image_tokens, other_text["tokens"],
                                other_text["text_mask"], method=model.reconstruct_image)
    zero_states = jnp.zeros_like(text["tokens"])
    rebuilt_zero = model.apply(variables, image_tokens, zero_states, text["text_mask"],
                               method=model.reconstruct_image)
    for changed in (rebuilt_other, rebuilt_zero):
        assert float(jnp.max(jnp.abs(changed[1:3] - rebuilt[1:3]))) > 1e-3
    # Rows 0 and 3 hold the same caption, so reversing leaves row 0's text, and its rebuild, as
    # they were: only the text changes the rebuild.
    np.testing.assert_allclose(rebuilt_other[0], rebuilt[0], atol=1e-5)

    clean_tokens, text = encode(images, tokens)
    logits = model.apply(variables, text["tokens"], text["text_mask"], clean_tokens,
                         method=model.predict_tokens)
    other_image_tokens, _ = encode(images[::-1], tokens)
    logits_other = model.apply(variables, text["tokens"], text["text_mask"],
                               other_image_tokens, method=model.predict_tokens)
    assert float(jnp.max(jnp.abs(logits_other - logits))) > 1e-3


def test_raw_pixel_masking_hides_the_masked_pixels(setup):
    """Whatever the masked patches held, the masked image (and so its encoding) is the same;
    the kept patches are the image's own pixels."""
    patch_mask = jnp.array([[True, False, False, True]])
    images = setup[4][:1]
    noise = np.random.default_rng(1).integers(0, 256, images.shape, dtype=np.uint8)
    scrambled = images.copy()
    scrambled[:, :PATCH, :PATCH] = noise[:, :PATCH, :PATCH]  # patch 0 (masked)
    masked, masked_scrambled = (np.asarray(mask_patches(jnp.asarray(x), patch_mask, PATCH))
                                for x in (images, scrambled))
    np.testing.assert_array_equal(masked, masked_scrambled)
    assert np.all(masked[:, :PATCH, :PATCH] == 0) and np.all(masked[:, PATCH:, PATCH:] == 0)
    np.testing.assert_allclose(masked[:, :PATCH, PATCH:],
                               images[:, :PATCH, PATCH:] / 127.5 - 1.0, atol=1e-6)


def test_the_trainer_serves_a_scorer_and_a_matcher(setup):
    config, tokenizer, model, params, images, tokens = setup
    assert trainers.get_trainer("maskvlm").CAPABILITIES == {"scorer", "matcher", "reconstructor"}
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=jax.devices()[:1])
    matcher = trainer.make_matcher(model, params, tokenizer, mesh, config)
    texts = ["a red circle", "two green triangles", "a red circle"]
    direct = model.apply({"params": params}, images[:3], tokenizer.encode(texts, LENGTH),
                         method=model.match)
    np.testing.assert_allclose(matcher.match(images[:3], matcher.tokenize(texts)), direct,
                               rtol=1e-5, atol=1e-5)
    scorer = trainer.make_scorer(model, params, tokenizer, mesh, config)
    assert scorer.encode_images(images).shape == (BATCH, config.model.embed_dim)


def test_the_reconstructor_rebuilds_as_the_mim_term_and_the_eval_writes_its_png(setup, tmp_path):
    config, tokenizer, model, params, images, tokens = setup
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=jax.devices()[:1])
    reconstructor = trainer.make_reconstructor(model, params, tokenizer, mesh, config)
    patch_mask = np.asarray(reconstructor.draw_masks(jax.random.key(1), BATCH))
    assert (patch_mask.sum(1) == round(0.6 * (SIZE // PATCH) ** 2)).all()
    captions = ["a red circle", "a blue square left of a red circle", "two green triangles",
                "a red circle"]
    rebuilt = reconstructor.reconstruct(images, captions, patch_mask)
    # The training loss's own MIM prediction of these masks (pretrain_outputs' "pixels").
    outputs = model.apply({"params": params}, images, jnp.asarray(tokens), patch_mask,
                          jnp.asarray(tokens), jax.random.key(2),
                          method=trainer.pretrain_outputs)
    np.testing.assert_allclose(rebuilt, outputs["pixels"], rtol=1e-5, atol=1e-5)
    # Through the loop's path: served by capability, run by name, PNG in evals.output_dir.
    config.evals.update(output_dir=str(tmp_path), reconstruction_size=8,
                        reconstruction_pictures=8, image_size=SIZE)
    served = trainers.serve_evals(trainer, ("reconstruction",), model, params, tokenizer, mesh,
                                  config)
    results = evals.run_served(("reconstruction",), served, config.evals)
    from vlm_jax.data import world
    val = world.World("val", seed=config.evals.seed, image_size=SIZE)
    val_images = np.stack([val[i]["image"] for i in range(8)])
    val_mask = np.asarray(reconstructor.draw_masks(jax.random.key(config.evals.seed), 8))
    expected = reconstructor.reconstruct(
        val_images, [val[i]["caption"] for i in range(8)], val_mask)
    hidden = numpy_patches(val_images)[val_mask]  # [masked patches, p*p*3]
    np.testing.assert_allclose(results["reconstruction/val/masked_mse"],
                               ((expected[val_mask] - hidden) ** 2).mean(), rtol=1e-5)
    from PIL import Image
    picture = Image.open(tmp_path / "mim_reconstructions.png")
    assert picture.size == (8 * (SIZE * 4 + 2) + 2, 3 * (SIZE * 4 + 2) + 2)
