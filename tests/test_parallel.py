"""Mesh layouts: a sharded train step equals the single-device step, for data + FSDP, data +
FSDP + tensor, pure FSDP and pure tensor parallelism; and a checkpoint saved under one mesh
restores under another (other devices, other count, other layout) with equal values and the
new shardings."""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import checkpoint, configlib, models, optim, parallel
from vlm_jax.train_state import create_train_state, make_train_step
from vlm_jax.trainers import contrastive

BATCH, SIZE, LENGTH, VOCAB = 16, 16, 12, 64
LR, STEPS = 2e-6, 3


@pytest.fixture(scope="module")
def setup():
    config = configlib.load_config("configs/siglip.py:tiny")
    config.model.image.update(width=32, depth=1, num_heads=4, mlp_dim=64)
    config.model.text.update(width=32, depth=1, num_heads=4, mlp_dim=64)
    config.model.embed_dim = 32
    # No warm-up: the first step trains at lr > 0 (at lr 0 any gradient passes), small enough
    # that Adam's ~lr moves stay within the parameter tolerance below.
    config.optim.update(warmup_steps=0, lr=LR)
    model = models.build_model(config.model, VOCAB)
    tx, schedule = optim.make_optimizer(config.optim, 10)
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    tokens[:, 8:] = 0
    batch = {"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
             "text_tokens": tokens}
    return config, model, tx, schedule, batch


@pytest.fixture(scope="module")
def single_device(setup):
    run = _train(setup, dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    return run.losses, run.params, run.grad_norms, run.raw_grads


def _new_state(setup, mesh_config, devices):
    """(state, shardings, abstract_state, mesh) of a fresh run on `devices` as `mesh_config`."""
    config, model, tx, _, _ = setup
    mesh = parallel.make_mesh(mesh_config, devices)
    rules = parallel.logical_rules(config)
    init = lambda rng: model.init(
        rng, jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8), jnp.zeros((1, LENGTH), jnp.int32))["params"]
    with nn.logical_axis_rules(rules):
        return (*create_train_state(init, tx, 0, mesh, rules), mesh)


class Run(NamedTuple):
    losses: np.ndarray  # [STEPS]
    grad_norms: np.ndarray  # [STEPS] train/grad_norm: of the raw gradients, before clipping
    raw_grads: dict  # d loss / d params at the initial state, as NumPy
    params: dict  # after STEPS steps, as NumPy
    state: object


def _train(setup, mesh_config, devices, steps=STEPS) -> Run:
    """`steps` train steps on that mesh, and the raw gradient of the first batch."""
    config, model, tx, schedule, batch = setup
    state, shardings, _, mesh = _new_state(setup, mesh_config, devices)
    loss_fn = contrastive.make_loss_fn(model, config)
    with nn.logical_axis_rules(parallel.logical_rules(config)):
        sharded_batch = parallel.global_batch(batch, mesh)
        # The gradient the step will clip and feed to Adam, computed under the same layout.
        raw_grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, None)[0]),
                           in_shardings=(shardings.params, parallel.batch_sharding(mesh)))
        raw_grads = jax.tree_util.tree_map(np.asarray, raw_grad(state.params, sharded_batch))
        step = make_train_step(loss_fn, tx, schedule, 1, shardings, mesh)
        losses, grad_norms = [], []
        for _ in range(steps):
            state, metrics = step(state, parallel.global_batch(batch, mesh))
            losses.append(float(metrics["train/loss"]))
            grad_norms.append(float(metrics["train/grad_norm"]))
    return Run(np.array(losses), np.array(grad_norms), raw_grads,
               jax.tree_util.tree_map(np.asarray, state.params), state)


def test_mesh_shape_resolves_the_rest_and_rejects_bad_shapes():
    assert parallel.mesh_shape(dict(data=-1, fsdp=2, tensor=1), 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="needs 6 devices"):
        parallel.mesh_shape(dict(data=3, fsdp=2, tensor=1), 8)
    with pytest.raises(ValueError, match="at most one axis"):
        parallel.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)


# Tolerance: the sharded step sums the same numbers in a different order (reductions split over
# devices), so results agree to float32 rounding, not bitwise: 1e-5 relative on the loss and the
# gradient norm; gradients to atol 1e-5 on entries up to ~1.2 (measured: 1.2e-6). Parameters:
# atol 1e-5 is more than STEPS Adam steps at lr 2e-6 (Adam moves a parameter by ~lr whatever its
# gradient's scale, so a coordinate whose gradient is rounding noise may step the other way).
# A gradient of the wrong scale moves parameters alike, so the gradients are what catch it.
# data x fsdp x tensor (all three axes) runs by default; data x fsdp alone is slow.
@pytest.mark.parametrize("layout", [pytest.param(dict(data=4, fsdp=2, tensor=1),
                                                 marks=pytest.mark.slow),
                                    dict(data=2, fsdp=2, tensor=2)])
def test_sharded_train_steps_equal_single_device(setup, single_device, layout):
    assert jax.device_count() == 8, "tests/conftest.py asks for 8 CPU devices"
    run = _train(setup, layout, jax.devices())
    _assert_equal_to_single_device(run, single_device)
    # The layout really is sharded: FSDP splits the embedding dimension of the MLP kernel.
    kernel = run.state.params["image_tower"]["encoder"]["block0"]["mlp"]["Dense_0"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


@pytest.fixture(scope="module")
def fsdp_run(setup):
    return _train(setup, dict(data=1, fsdp=8, tensor=1), jax.devices())


def _sharded_leaves(params, axis: str):
    """{path: (global shape, one device's shard shape)} of the params split over `axis`."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if axis in jax.tree_util.tree_leaves(tuple(leaf.sharding.spec)):
            out[jax.tree_util.keystr(path)] = (leaf.shape, leaf.addressable_shards[0].data.shape)
    return out


def _assert_equal_to_single_device(run: Run, single_device):
    # Tolerances as above: sharded reductions sum in another order.
    ref_losses, ref_params, ref_grad_norms, ref_grads = single_device
    np.testing.assert_allclose(run.losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(run.grad_norms, ref_grad_norms, rtol=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(run.raw_grads),
                         jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(run.params),
                         jax.tree_util.tree_leaves(ref_params)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fsdp_alone_equals_single_device(fsdp_run, single_device):
    _assert_equal_to_single_device(fsdp_run, single_device)
    # Parameters and optimizer state are split 8 ways along `embed`.
    for tree in (fsdp_run.state.params, fsdp_run.state.opt_state):
        sharded = _sharded_leaves(tree, "fsdp")
        assert sharded and all(np.prod(full) == 8 * np.prod(shard)
                               for full, shard in sharded.values())


def test_tensor_parallel_alone_equals_single_device(setup, single_device):
    run = _train(setup, dict(data=1, fsdp=1, tensor=2), jax.devices()[:2])
    _assert_equal_to_single_device(run, single_device)
    # Both towers split their heads and MLP hidden units over the two devices.
    sharded = _sharded_leaves(run.state.params, "tensor")
    for tower in ("image_tower", "text_tower"):
        for part in ("attn", "mlp"):
            paths = [p for p in sharded if tower in p and part in p]
            assert paths, f"no {tower} {part} parameter is tensor-parallel"
            assert all(np.prod(sharded[p][0]) == 2 * np.prod(sharded[p][1]) for p in paths)


def test_checkpoint_restores_under_another_mesh(setup, fsdp_run, tmp_path):
    """Saved from 8 devices as fsdp=8, restored on 4 others as data=2 x tensor=2."""
    target, devices = dict(data=2, fsdp=1, tensor=2), slice(4, 8)
    saved = fsdp_run.state  # trained: the optimizer moments are nonzero
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(2, saved, {"iterator": {"position": 2}, "corrupt_records": 0})
    ckpt.close()

    _, shardings, abstract, _ = _new_state(setup, target, jax.devices()[devices])
    restored, data_state = checkpoint.Checkpointer(str(tmp_path)).restore(2, abstract)
    assert data_state == {"iterator": {"position": 2}, "corrupt_records": 0}
    assert int(restored.step) == STEPS
    for got, want, sharding in zip(jax.tree_util.tree_leaves(restored),
                                   jax.tree_util.tree_leaves(saved),
                                   jax.tree_util.tree_leaves(shardings)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert got.sharding == sharding
        assert set(got.sharding.device_set) <= set(jax.devices()[devices])


def test_the_batch_rule_places_batches_and_block_activations():
    mesh = parallel.make_mesh(dict(data=4, fsdp=2, tensor=1), jax.devices()[:8])
    default = (("batch", ("data", "fsdp")), ("length", None), ("embed", "fsdp"))
    data_only = (("batch", "data"), ("length", None), ("embed", "fsdp"))
    assert parallel.batch_axes(None) == parallel.BATCH_AXES
    assert parallel.batch_sharding(mesh, default).spec == jax.sharding.PartitionSpec(
        ("data", "fsdp"))
    batch = parallel.global_batch({"x": np.zeros((8, 3), np.float32)}, mesh, data_only)
    assert batch["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(batch["x"].sharding.device_set) == 8 and batch["x"].addressable_shards[0] \
        .data.shape == (2, 3)  # 8 rows over data=4 only: 2 per device, fsdp replicates
    with pytest.raises(ValueError, match="no \\('batch', ...\\) rule"):
        parallel.batch_axes((("embed", "fsdp"),))
    # The blocks constrain their activations by the same rule.
    block = models.layers.Block(4, 64, 32)
    x = jnp.ones((8, 5, 32))
    params = block.init(jax.random.PRNGKey(0), x)
    # A fresh jit each time: jax's trace cache does not key on flax's rules context. With batch
    # on data only, fsdp is free, so the activations' embed takes it (as the rules say).
    for rules, spec in ((default, '[{"data", "fsdp"}, {}, {}]'),
                        (data_only, '[{"data"}, {}, {"fsdp"}]')):
        with parallel.activation_sharding(mesh, rules):
            assert spec in jax.jit(block.apply).lower(params, x).as_text()
    assert "sharding_constraint" not in jax.jit(block.apply).lower(params, x).as_text()
