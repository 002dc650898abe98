"""Execution options change how the encoders compute, never what: padding, remat, scan, bf16."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import configlib, models
from vlm_jax.models.layers import Execution
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT

TOKENS = np.array([[5, 6, 7, 3, 0, 0, 0], [8, 9, 3, 0, 0, 0, 0]], np.int32)  # length 7: odd
IMAGES = np.random.default_rng(0).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
SIZES = dict(width=32, depth=3, num_heads=4, mlp_dim=64)
# A random read-out of the pooled features: the sum of squares of a LayerNorm'd vector is
# nearly constant (its gradient is rounding noise), so the losses below weigh each feature.
READOUT = np.random.default_rng(1).standard_normal((2, SIZES["width"])).astype(np.float32)


def _text(execution=None, causal=False):
    return TextTransformer(vocab_size=16, max_len=16, causal=causal, pool="mean",
                           execution=execution or Execution(), **SIZES)


def _vit(execution=None):  # 3x3 patches + CLS = 10 tokens
    return ViT(patch_size=4, pool="cls", execution=execution or Execution(), **SIZES)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_to_a_multiple_of_8_leaves_text_outputs_unchanged(causal):
    params = _text(causal=causal).init(jax.random.PRNGKey(0), TOKENS)
    reference, extras = _text(causal=causal).apply(params, TOKENS)
    padded, padded_extras = _text(Execution(pad_multiple=8), causal).apply(params, TOKENS)
    np.testing.assert_allclose(padded, reference, rtol=1e-5, atol=1e-6)
    assert padded_extras["tokens"].shape == extras["tokens"].shape  # padding is cut off


def test_padding_a_cls_vit_leaves_outputs_and_gradients_unchanged():
    params = _vit().init(jax.random.PRNGKey(0), IMAGES)
    loss = lambda p, module: jnp.sum(module.apply(p, IMAGES)[0] * READOUT)
    value, grads = jax.value_and_grad(loss)(params, _vit())
    padded_value, padded_grads = jax.value_and_grad(loss)(params, _vit(Execution(pad_multiple=8)))
    np.testing.assert_allclose(padded_value, value, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(padded_grads), jax.tree_util.tree_leaves(grads)):
        assert np.all(np.isfinite(a))  # measured: at most 1.5e-6 apart, gradients of size ~1
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-6)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_gradients(remat):
    params = _vit().init(jax.random.PRNGKey(0), IMAGES)
    loss = lambda p, module: jnp.sum(module.apply(p, IMAGES)[0] * READOUT)
    grads = jax.grad(loss)(params, _vit())
    remat_grads = jax.grad(loss)(params, _vit(Execution(remat=remat)))
    # Measured: at most 2e-6 apart (the recomputed blocks fuse differently), gradients ~1.
    for a, b in zip(jax.tree_util.tree_leaves(remat_grads), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-6)


def test_scanned_layers_equal_unrolled_layers_with_stacked_parameters():
    params = nn.unbox(_text().init(jax.random.PRNGKey(0), TOKENS))["params"]
    encoder = dict(params["encoder"])
    blocks = [encoder.pop(f"block{i}") for i in range(SIZES["depth"])]
    encoder["blocks"] = {"block": jax.tree_util.tree_map(lambda *x: jnp.stack(x), *blocks)}
    scanned_params = {**params, "encoder": encoder}
    scanned = _text(Execution(scan_layers=True))
    shapes = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), TOKENS)["params"]
    assert jax.tree_util.tree_map(lambda x: x.shape, nn.unbox(shapes)) == \
        jax.tree_util.tree_map(lambda x: x.shape, scanned_params)
    reference, _ = _text().apply({"params": params}, TOKENS)
    out, _ = scanned.apply({"params": scanned_params}, TOKENS)
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)


def test_bad_execution_options_are_named():
    with pytest.raises(ValueError, match="execution.remat 'some'"):
        Execution(remat="some")
    with pytest.raises(ValueError, match="execution.attention 'flash'"):
        Execution(attention="flash")


def test_bfloat16_compute_keeps_float32_parameters_and_close_outputs():
    config = configlib.load_config("configs/siglip.py:tiny")
    config.model.image.update(width=32, depth=1, num_heads=4, mlp_dim=64)
    config.model.text.update(width=32, depth=1, num_heads=4, mlp_dim=64)
    f32 = models.build_model(config.model, 64, jnp.float32)
    bf16 = models.build_model(config.model, 64, jnp.bfloat16)
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    tokens = np.random.default_rng(2).integers(1, 64, (4, 12)).astype(np.int32)
    params = f32.init(jax.random.PRNGKey(0), images, tokens)
    assert {x.dtype for x in jax.tree_util.tree_leaves(nn.unbox(
        bf16.init(jax.random.PRNGKey(0), images, tokens)))} == {jnp.dtype(jnp.float32)}
    image_32, text_32, _ = f32.apply(params, images, tokens)
    image_16, text_16, _ = bf16.apply(params, images, tokens)
    assert image_16.dtype == jnp.float32  # embeddings leave in float32 for the loss
    # bfloat16 has an 8-bit mantissa: unit vectors agree to a few parts in a hundred.
    np.testing.assert_allclose(image_16, image_32, atol=3e-2)
    np.testing.assert_allclose(text_16, text_32, atol=3e-2)


def test_execution_is_a_config_switch():
    config = configlib.load_config("configs/clip.py:tiny")
    config.model.execution.update(pad_multiple=8, remat="dots", scan_layers=True)
    model = models.build_model(config.model, 64)
    assert model.image["execution"] == dataclasses.replace(
        Execution(), pad_multiple=8, remat="dots", scan_layers=True)


def _family(name, execution):
    """A tiny Llip or CoCa from its config, computing as `execution` says."""
    config = configlib.load_config(f"configs/{name}.py:tiny")
    for tower in ("image", "text", "multimodal"):
        if tower in config.model:
            config.model[tower].update(width=32, depth=2 if tower == "text" else 1,
                                       num_heads=4, mlp_dim=64)
    config.model.embed_dim = 16
    if name == "coca":
        config.model.caption_queries, config.model.pool_heads = 4, 4
    if name == "llip":
        config.model.num_mixture_tokens = 3
    config.model.execution.update(dataclasses.asdict(execution))
    return models.build_model(config.model, 64)


@pytest.mark.parametrize("name", ["llip", "coca"])
# The combined option runs by default (padding, remat and the xla attention at once); each
# alone is slow (a minute each on 2 cores: two families' grads, compiled twice).
@pytest.mark.parametrize("execution", [
    pytest.param(Execution(pad_multiple=8), marks=pytest.mark.slow),
    pytest.param(Execution(remat="full"), marks=pytest.mark.slow),
    Execution(attention="xla", pad_multiple=8, remat="dots")])
def test_llip_and_coca_outputs_and_gradients_do_not_depend_on_execution(name, execution):
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    # Length 6: the unimodal half runs 7 tokens (text + [CLS]), the multimodal 6; both get padded.
    tokens = np.array([[5, 6, 7, 3, 0, 0], [8, 9, 3, 0, 0, 0]], np.int32)
    reference = _family(name, Execution())
    params = reference.init(jax.random.PRNGKey(0), images, tokens)

    def loss(p, model):
        image_out, text_emb, extras = model.apply(p, images, tokens)
        value = jnp.sum(image_out ** 2 * 0.5) + jnp.sum(text_emb * text_emb[::-1])
        return value + jnp.sum(extras.get("caption_logits", 0.0) ** 2) * 1e-3

    value, grads = jax.value_and_grad(loss)(params, reference)
    other_value, other_grads = jax.value_and_grad(loss)(params, _family(name, execution))
    np.testing.assert_allclose(other_value, value, rtol=1e-5)
    # Measured: at most 4e-6 absolute on gradients of size ~1e-2 (summation order of the
    # padded/rematerialised matmuls); reading a padded token instead of [CLS] is off by O(1).
    for a, b in zip(jax.tree_util.tree_leaves(other_grads), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_execution_reaches_llip_towers_and_coca_decoders():
    run = Execution(pad_multiple=8, remat="full")
    llip, coca = _family("llip", run), _family("coca", run)
    assert llip.image["execution"] == run and llip.text["execution"] == run
    assert coca.execution == run
    with pytest.raises(ValueError, match="scan_layers is not supported by CoCa"):
        _family("coca", Execution(scan_layers=True)).init(
            jax.random.PRNGKey(0), IMAGES[:, :8, :8], TOKENS)
