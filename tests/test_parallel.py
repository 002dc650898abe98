"""Mesh layouts: a sharded train step equals the single-device step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import configlib, models, optim, parallel
from vlm_jax.train_state import create_train_state, make_train_step
from vlm_jax.trainers import contrastive

BATCH, SIZE, LENGTH, VOCAB = 16, 16, 12, 64


@pytest.fixture(scope="module")
def setup():
    config = configlib.load_config("configs/siglip.py:tiny")
    config.model.image.update(width=32, depth=2, num_heads=4, mlp_dim=64)
    config.model.text.update(width=32, depth=2, num_heads=4, mlp_dim=64)
    config.model.embed_dim = 32
    model = models.build_model(config.model, VOCAB)
    tx, schedule = optim.make_optimizer(config.optim, 10)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    tokens[:, 9:] = 0
    batch = {"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
             "text_tokens": tokens}
    return config, model, tx, schedule, batch


@pytest.fixture(scope="module")
def single_device(setup):
    losses, params, _ = _train(setup, dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    return losses, params


def _train(setup, mesh_config, devices, steps=2):
    config, model, tx, schedule, batch = setup
    mesh = parallel.make_mesh(mesh_config, devices)
    rules = parallel.logical_rules(config)
    init = lambda rng: model.init(
        rng, jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8), jnp.zeros((1, LENGTH), jnp.int32))["params"]
    with nn.logical_axis_rules(rules):
        state, shardings, _ = create_train_state(init, tx, 0, mesh, rules)
        step = make_train_step(contrastive.make_loss_fn(model, config), tx, schedule, 1,
                               shardings, mesh)
        losses = []
        for _ in range(steps):
            state, metrics = step(state, parallel.global_batch(batch, mesh))
            losses.append(float(metrics["train/loss"]))
    return np.array(losses), jax.tree_util.tree_map(np.asarray, state.params), state


def test_mesh_shape_resolves_the_rest_and_rejects_bad_shapes():
    assert parallel.mesh_shape(dict(data=-1, fsdp=2, tensor=1), 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="needs 6 devices"):
        parallel.mesh_shape(dict(data=3, fsdp=2, tensor=1), 8)
    with pytest.raises(ValueError, match="at most one axis"):
        parallel.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)


# Tolerance: the sharded step sums the same numbers in a different order (reductions split over
# devices), so results agree to float32 rounding, not bitwise: 1e-5 relative on the loss.
@pytest.mark.parametrize("layout", [dict(data=4, fsdp=2, tensor=1),
                                    dict(data=2, fsdp=2, tensor=2)])
def test_sharded_train_steps_equal_single_device(setup, single_device, layout):
    assert jax.device_count() == 8, "tests/conftest.py asks for 8 CPU devices"
    ref_losses, ref_params = single_device
    losses, params, state = _train(setup, layout, jax.devices())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The layout really is sharded: FSDP splits the embedding dimension of the MLP kernel.
    kernel = state.params["image_tower"]["encoder"]["block0"]["mlp"]["Dense_0"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
