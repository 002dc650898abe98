"""Early fusion's pieces against independent references: codes written into the placeholders,
the caption-first order rebuilt from the texts, the per-head QK LayerNorm and the z-loss in
NumPy, the image-code restriction (no text id is ever sampled at an image position), and
classifier-free guidance in the KV-cached sampler against a NumPy mix of full forward passes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import chameleon
from vlm_jax import early_fusion_generation as generation
from vlm_jax.data import formats, world
from vlm_jax.data.tokenizer import load_tokenizer
from vlm_jax.losses import generative
from vlm_jax.models import early_fusion, layers, lm, vq
from vlm_jax.vq_tokenizer import ImageTokenizer

CODES, IMAGE_SIZE = 32, 16  # a random VQ: 16 px -> 4 x 4 codes of 32


def small_config():
    config = chameleon.get_config("tiny")
    config.data.update(image_size=IMAGE_SIZE, image_tokens=16, image_codes=CODES,
                       text_length=96)
    return config


@functools.cache
def random_vq() -> ImageTokenizer:
    model = vq.VQVAE(channels=(8, 16), res_blocks=1, code_dim=8, codebook_size=CODES)
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3),
                                                        np.uint8))["params"]
    return ImageTokenizer(model, params, IMAGE_SIZE)


@functools.cache
def tokenizer():
    return load_tokenizer(small_config().data)


def vocab():
    return early_fusion.image_vocabulary(tokenizer(), CODES)


def tiny_lm(**fields):
    model = lm.LM(vocab_size=tokenizer().vocab_size, width=32, depth=2, num_heads=4,
                  num_kv_heads=2, mlp_dim=64, qk_norm=True, qk_norm_type="head_layernorm",
                  qk_norm_eps=1e-5, **fields)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 8), jnp.int32))[
        "params"])
    # Random per-head norm scales and biases, so the test sees them applied per head.
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
        if "norm" in jax.tree_util.keystr(path) else x, params)
    return model, params


def documents(n, config=None):
    """n interleaved world documents through the shared format: the raw texts and the rows."""
    config = config or small_config()
    source = world.World("train", image_size=IMAGE_SIZE)
    docs = [source.document(i, config.data.max_images) for i in range(n)]
    rows = [formats.interleaved_example(tokenizer(), d["texts"], d["closing"], len(d["images"]),
                                        config.data) for d in docs]
    return docs, rows


def test_fuse_codes_writes_each_images_codes_over_its_placeholders():
    config = small_config()
    docs, rows = documents(4, config)
    tokens = np.stack([r["text_tokens"] for r in rows])
    positions = np.stack([r["image_positions"] for r in rows])
    valid = np.stack([r["image_valid"] for r in rows])
    codes = np.random.default_rng(0).integers(0, CODES, (4, config.data.max_images, 16))
    fused = np.asarray(early_fusion.fuse_codes(jnp.asarray(tokens), jnp.asarray(codes),
                                               jnp.asarray(positions), jnp.asarray(valid),
                                               vocab().code_offset))
    expected = tokens.copy()
    for b in range(4):
        for m in range(config.data.max_images):
            if valid[b, m]:
                start = positions[b, m]
                expected[b, start:start + 16] = codes[b, m] + vocab().code_offset
    np.testing.assert_array_equal(fused, expected)
    assert not np.any(fused == vocab().placeholder_id)  # every placeholder was an image's
    assert valid.sum() > 4  # some documents hold two images


def test_caption_first_rebuilds_caption_then_image_from_the_texts():
    config = small_config()
    docs, rows = documents(6, config)
    t, v, per_image = tokenizer(), vocab(), config.data.image_tokens
    tokens = jnp.asarray(np.stack([r["text_tokens"] for r in rows]))
    segments = jnp.asarray(np.stack([r["segment_ids"] for r in rows]))
    flip = jnp.asarray([True, False, True, True, False, True])
    out = np.asarray(early_fusion.caption_first(tokens, segments, flip, v.eos_id))
    block = [v.boi_id] + [v.placeholder_id] * per_image + [v.eoi_id]
    for b, doc in enumerate(docs):
        ids = [t.bos_id]
        for text in doc["texts"]:
            caption = t.text_ids(text)
            ids += caption + block if flip[b] else block + caption
        ids += t.text_ids(doc["closing"]) + [t.eos_id]
        assert len(ids) <= config.data.text_length  # these documents are not truncated
        expected = ids + [t.pad_id] * (config.data.text_length - len(ids))
        np.testing.assert_array_equal(out[b], expected)
    assert sum(len(d["images"]) == 2 for d in docs) >= 2  # the closing span is exercised


def test_head_layernorm_normalises_each_head_with_its_own_scale_and_bias():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 8)).astype(np.float32) * 3 + 1
    norm = layers.HeadLayerNorm(eps=1e-5)
    shapes = jax.tree_util.tree_map(np.shape, nn.meta.unbox(norm.init(jax.random.PRNGKey(0), x)))
    assert shapes == {"params": {"scale": (4, 8), "bias": (4, 8)}}
    rng = np.random.default_rng(1)
    params = {"scale": rng.standard_normal((4, 8)).astype(np.float32),
              "bias": rng.standard_normal((4, 8)).astype(np.float32)}
    out = norm.apply({"params": params}, x)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-5) * params["scale"] + params["bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_z_loss_is_the_masked_mean_of_log_z_squared():
    logits = np.random.default_rng(0).standard_normal((2, 5, 7)).astype(np.float32) * 4
    mask = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 0, 1]], bool)
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    expected = (log_z**2 * mask).sum() / mask.sum()
    np.testing.assert_allclose(generative.z_loss(jnp.asarray(logits), jnp.asarray(mask)),
                               expected, rtol=1e-5)


def test_guided_logits_match_numpy():
    rng = np.random.default_rng(0)
    cond, uncond = rng.standard_normal((2, 3, 11)).astype(np.float32)
    for scale in (0.0, 1.0, 3.0):
        np.testing.assert_allclose(early_fusion.guided_logits(cond, uncond, scale),
                                   uncond + scale * (cond - uncond), rtol=1e-6)


def test_sampled_image_positions_never_hold_a_text_token():
    model, params = tiny_lm()
    v = vocab()
    # Push every text id far above the codes: only the restriction keeps them out.
    head = np.asarray(params["lm_head"]["kernel"]).copy()
    head[:, :v.code_offset] *= 50.0
    params = {**params, "lm_head": {"kernel": jnp.asarray(head)}}
    prompt = jnp.asarray([[v.bos_id, 10, 11, v.boi_id]] * 8, jnp.int32)
    uncond = jnp.asarray([[v.bos_id, v.boi_id]] * 8, jnp.int32)
    codes = np.asarray(generation.sample_codes(model, params, v, prompt, uncond, 16, 3.0, 1.0,
                                               jax.random.PRNGKey(0)))
    assert codes.shape == (8, 16)
    assert codes.min() >= 0 and codes.max() < CODES
    assert len(np.unique(codes)) > 4  # really sampled, not one constant
    logits = model.apply({"params": params}, prompt)[:, -1]
    assert np.all(np.argmax(logits, -1) < v.code_offset)  # unrestricted, text would win


def reference_guided_greedy(model, params, v, cond, uncond, num_codes, scale):
    """Greedy CFG by full forward passes (no cache), mixed and restricted in NumPy."""
    cond, uncond = [list(r) for r in np.asarray(cond)], [list(r) for r in np.asarray(uncond)]
    out = []
    for _ in range(num_codes):
        lc = np.asarray(model.apply({"params": params}, jnp.asarray(cond)))[:, -1]
        lu = np.asarray(model.apply({"params": params}, jnp.asarray(uncond)))[:, -1]
        mixed = lu + scale * (lc - lu)
        mixed[:, :v.code_offset] = -np.inf
        token = mixed.argmax(-1)
        out.append(token - v.code_offset)
        cond = [r + [int(k)] for r, k in zip(cond, token, strict=True)]
        uncond = [r + [int(k)] for r, k in zip(uncond, token, strict=True)]
    return np.stack(out, 1)


def test_cached_guided_sampler_matches_numpy_mix_of_full_forwards():
    scale = 2.5
    model, params = tiny_lm()
    v = vocab()
    cond = jnp.asarray([[v.bos_id, 10, 11, 12, v.boi_id], [v.bos_id, 20, 21, 22, v.boi_id]])
    uncond = jnp.asarray([[v.bos_id, v.boi_id]] * 2)
    codes = generation.sample_codes(model, params, v, cond, uncond, 4, scale, 0.0,
                                    jax.random.PRNGKey(0))
    expected = reference_guided_greedy(model, params, v, cond, uncond, 4, scale)
    np.testing.assert_array_equal(np.asarray(codes), expected)
    # The unconditional stream matters: the conditional logits alone pick other codes.
    assert np.any(reference_guided_greedy(model, params, v, cond, uncond, 4, 1.0) != expected)


def test_vocabulary_must_end_with_the_codebook():
    with pytest.raises(ValueError, match="must be its last 31 ids"):
        early_fusion.image_vocabulary(tokenizer(), CODES - 1)
