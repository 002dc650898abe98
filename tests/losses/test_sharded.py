"""Every sharded variant of both contrastive losses equals the single-device reference, for
dot-product scores (CLIP, SigLIP) and Llip's caption-conditioned ones.

Loss, i2t accuracy and the gradients for image_emb, text_emb, logit_scale and logit_bias, on
meshes of 1 to 8 of the 8 simulated CPU devices (odd rings too, for the bidirectional ring).
The 2-process version of this check is tests/multiprocess/test_sharded_losses_2proc.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from vlm_jax import parallel
from vlm_jax.losses.contrastive import sigmoid_contrastive_loss, softmax_contrastive_loss
from vlm_jax.losses.sharded import (
    sharded_sigmoid_contrastive_loss,
    sharded_softmax_contrastive_loss,
)

BATCH, DIM = 120, 16  # 120 rows split evenly over 1, 2, 3, 4, 5, 6 and 8 devices
SCALE, BIAS = 10.0, -5.0
# (variant, bidirectional)
VARIANTS = [("gspmd", False), ("gather", False), ("ring", False), ("ring", True)]


def _embeddings(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, DIM))
    y = x + 1.2 * rng.normal(size=(BATCH, DIM))  # correlated pairs: accuracy well off 0 and 1
    normalize = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    return np.float32(normalize(x)), np.float32(normalize(y))


def _mesh(data, fsdp, tensor):
    devices = jax.devices()[: data * fsdp * tensor]
    return parallel.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor), devices)


def _reference(loss, x, y):
    """Loss, accuracy and gradients on one device, unsharded."""
    if loss == "softmax":
        fn = lambda a, b, s, c: softmax_contrastive_loss(a, b, s)
    else:
        fn = sigmoid_contrastive_loss
    device = jax.devices()[0]
    args = [jax.device_put(v, device) for v in (x, y, np.float32(SCALE), np.float32(BIAS))]
    (value, metrics), grads = jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True)(*args)
    return value, metrics, grads


def _sharded(loss, variant, bidirectional, mesh, x, y, batch_axes=parallel.BATCH_AXES):
    """The same under jit, embeddings as global arrays split over the batch axes."""
    if loss == "softmax":
        fn = lambda a, b, s, c: sharded_softmax_contrastive_loss(
            a, b, s, mesh, variant, batch_axes=batch_axes, bidirectional=bidirectional)
    else:
        fn = lambda a, b, s, c: sharded_sigmoid_contrastive_loss(
            a, b, s, c, mesh, variant, batch_axes=batch_axes, bidirectional=bidirectional)
    rows = NamedSharding(mesh, PartitionSpec(tuple(batch_axes)))
    replicated = NamedSharding(mesh, PartitionSpec())
    args = [jax.device_put(x, rows), jax.device_put(y, rows),
            jax.device_put(np.float32(SCALE), replicated),
            jax.device_put(np.float32(BIAS), replicated)]
    step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True))
    (value, metrics), grads = step(*args)
    return value, metrics, grads


def _assert_equal_to_reference(loss, got, want):
    (value, metrics, grads), (ref_value, ref_metrics, ref_grads) = got, want
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], ref_value, rtol=1e-5)
    assert float(metrics["i2t_accuracy"]) == float(ref_metrics["i2t_accuracy"])
    names = ["image_emb", "text_emb", "logit_scale", "logit_bias"]
    for name, g, ref in zip(names, grads, ref_grads):
        if loss == "softmax" and name == "logit_bias":
            continue  # the softmax loss has no bias
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def references():
    x, y = _embeddings()
    return x, y, {loss: _reference(loss, x, y) for loss in ("softmax", "sigmoid")}


def test_reference_is_not_degenerate(references):
    _, _, refs = references
    for _, metrics, grads in refs.values():
        assert 0.2 < float(metrics["i2t_accuracy"]) < 0.9  # the accuracy check means something
        assert float(jnp.abs(grads[2])) > 1e-3  # so does the scale gradient


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
@pytest.mark.parametrize("variant,bidirectional", VARIANTS)
@pytest.mark.parametrize("mesh_shape", [
    (8, 1, 1), (2, 2, 2), pytest.param((2, 4, 1), marks=pytest.mark.slow)])
def test_variant_equals_reference_on_8_devices(references, loss, variant, bidirectional,
                                               mesh_shape):
    x, y, refs = references
    got = _sharded(loss, variant, bidirectional, _mesh(*mesh_shape), x, y)
    _assert_equal_to_reference(loss, got, refs[loss])


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_devices", [3, 5] + [
    pytest.param(n, marks=pytest.mark.slow) for n in (1, 2, 6)])
def test_ring_equals_reference_for_any_ring_length(references, loss, bidirectional, num_devices):
    # Odd rings skip the last left-going visit; rings of 1 and 2 have no second direction.
    x, y, refs = references
    got = _sharded(loss, "ring", bidirectional, _mesh(num_devices, 1, 1), x, y)
    _assert_equal_to_reference(loss, got, refs[loss])


@pytest.mark.parametrize("loss,variant", [("softmax", "ring"), ("sigmoid", "gather")])
def test_batch_over_one_axis_replicated_over_the_other(references, loss, variant):
    x, y, refs = references
    got = _sharded(loss, variant, False, _mesh(2, 4, 1), x, y, batch_axes=("data",))
    _assert_equal_to_reference(loss, got, refs[loss])


def test_unknown_variant_is_an_error():
    x, y = _embeddings()
    with pytest.raises(ValueError, match="'allgather' must be one of gspmd, gather, ring"):
        sharded_softmax_contrastive_loss(x, y, SCALE, _mesh(8, 1, 1), "allgather")


# The trainer's wiring: `config.loss.variant` selects the variant inside the trainer's loss_fn.

_BATCH, _SIZE, _LENGTH, _VOCAB = 16, 16, 12, 64


def _tiny_two_tower(config_name, variant, bidirectional):
    from vlm_jax import configlib, models

    config = configlib.load_config(config_name)
    for tower in (config.model.image, config.model.text):
        tower.update(width=32, depth=1, num_heads=4, mlp_dim=64)
    config.model.embed_dim = 32
    config.loss.variant, config.loss.bidirectional = variant, bidirectional
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (_BATCH, _SIZE, _SIZE, 3), dtype=np.uint8),
             "text_tokens": rng.integers(1, _VOCAB, (_BATCH, _LENGTH)).astype(np.int32)}
    return config, models.build_model(config.model, _VOCAB), batch


def _init(model, key):
    return model.init(key, jnp.zeros((1, _SIZE, _SIZE, 3), jnp.uint8),
                      jnp.zeros((1, _LENGTH), jnp.int32))["params"]


@pytest.mark.parametrize("config_name,variant,bidirectional", [
    ("configs/siglip.py:tiny", "ring", True),
    # Llip: each device's mixtures meet every text chunk; kernels, scale, bias get gradients.
    ("configs/llip.py:tiny,mixture_tokens=3", "ring", True),
    pytest.param("configs/llip.py:tiny,mixture_tokens=3,loss=softmax", "gather", False,
                 marks=pytest.mark.slow),
    pytest.param("configs/clip.py:tiny", "gather", False, marks=pytest.mark.slow),
    pytest.param("configs/llip.py:tiny,mixture_tokens=3,loss=softmax", "ring", False,
                 marks=pytest.mark.slow),
])
def test_trainer_loss_fn_with_sharded_variant_equals_gspmd(config_name, variant, bidirectional):
    import flax.linen as nn

    from vlm_jax.trainers import get_trainer

    mesh = _mesh(4, 2, 1)
    config, model, batch = _tiny_two_tower(config_name, variant, bidirectional)
    trainer = get_trainer(config.trainer)
    params = nn.unbox(_init(model, jax.random.PRNGKey(0)))
    global_batch = parallel.global_batch(batch, mesh)
    results = []
    for name in ("gspmd", variant):
        config.loss.variant = name
        loss_fn = trainer.make_loss_fn(model, config, mesh=mesh)
        (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
            params, global_batch, None)
        results.append((loss, metrics["i2t_accuracy"], grads))
    (ref_loss, ref_accuracy, ref_grads), (loss, accuracy, grads) = results
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert float(accuracy) == float(ref_accuracy)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads)


@pytest.mark.slow
def test_train_steps_with_ring_loss_and_accumulation_equal_gspmd():
    # The ring inside the train step's micro-batch scan, two optimizer steps.
    import flax.linen as nn

    from vlm_jax import optim
    from vlm_jax.train_state import create_train_state, make_train_step
    from vlm_jax.trainers import contrastive as trainer

    mesh = _mesh(2, 2, 2)
    config, model, batch = _tiny_two_tower("configs/siglip.py:tiny", "ring", True)
    tx, schedule = optim.make_optimizer(config.optim, 10)
    rules = parallel.logical_rules(config)
    runs = []
    for variant in ("gspmd", "ring"):
        config.loss.variant = variant
        with nn.logical_axis_rules(rules):
            state, shardings, _ = create_train_state(
                functools.partial(_init, model), tx, 0, mesh, rules)
            step = make_train_step(trainer.make_loss_fn(model, config, mesh=mesh), tx, schedule,
                                   2, shardings, mesh)
            losses = []
            for _ in range(2):
                state, metrics = step(state, parallel.global_batch(batch, mesh))
                losses.append(float(metrics["train/loss"]))
        runs.append((np.array(losses), jax.tree_util.tree_map(np.asarray, state.params)))
    (ref_losses, ref_params), (losses, params) = runs
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    # atol as in tests/test_parallel.py: Adam turns float32 rounding in near-zero gradients
    # into parameter differences of order lr * 1e-1.
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, ref_params)


def test_trainer_rejects_a_sharded_variant_without_mesh_or_an_unknown_one():
    from vlm_jax import configlib
    from vlm_jax.trainers import contrastive as trainer

    config = configlib.load_config("configs/siglip.py:tiny")
    config.loss.variant = "ring"
    with pytest.raises(ValueError, match="'ring' runs on the device mesh, but make_loss_fn got"):
        trainer.make_loss_fn(None, config)
    config.loss.variant = "shuffle"
    with pytest.raises(ValueError, match="'shuffle' must be one of gspmd, gather, ring"):
        trainer.make_loss_fn(None, config, mesh=_mesh(8, 1, 1))


# A row mask (`valid`): the loss of the valid rows alone, every variant alike.

# Invalid rows: scattered, plus every row of device 2 of 8 (a chunk with no valid text) and
# of the first 15 rows (device 0's, so a device whose images are all masked).
_VALID = np.ones(BATCH, bool)
_VALID[[3, 17, 18, 64, 101, 119]] = False
_VALID[30:45] = False
_VALID[0:15] = False


def _masked_reference(loss, x, y, valid, label_smoothing=0.0):
    """The unmasked reference (`_reference`'s functions) on the valid rows alone, with the
    gradients scattered back to the full batch (zero on the invalid rows)."""
    rows = np.flatnonzero(valid)
    value, metrics, grads = (_reference(loss, x[rows], y[rows]) if not label_smoothing
                             else _smoothed_reference(x[rows], y[rows], label_smoothing))
    full = []
    for g, a in zip(grads[:2], (x, y)):
        z = np.zeros_like(a)
        z[rows] = g
        full.append(z)
    return value, metrics, (*full, *grads[2:])


def _smoothed_reference(x, y, label_smoothing):
    from vlm_jax.losses.contrastive import softmax_loss_on_logits

    fn = lambda a, b, s, c: softmax_loss_on_logits(s * a @ b.T, label_smoothing)
    (value, metrics), grads = jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True)(
        x, y, np.float32(SCALE), np.float32(BIAS))
    return value, metrics, grads


def _sharded_masked(loss, variant, bidirectional, mesh, x, y, valid, label_smoothing=0.0):
    from vlm_jax.losses.sharded import dot_score, sharded_pair_loss

    def fn(a, b, s, c, v):
        params = {"scale": s} if loss == "softmax" else {"scale": s, "bias": c}
        return sharded_pair_loss(loss, a, b, dot_score, params, mesh, variant,
                                 bidirectional=bidirectional, label_smoothing=label_smoothing,
                                 valid=v)

    rows = NamedSharding(mesh, PartitionSpec(parallel.BATCH_AXES))
    replicated = NamedSharding(mesh, PartitionSpec())
    args = [jax.device_put(x, rows), jax.device_put(y, rows),
            jax.device_put(np.float32(SCALE), replicated),
            jax.device_put(np.float32(BIAS), replicated), jax.device_put(valid, rows)]
    step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True))
    (value, metrics), grads = step(*args)
    return value, metrics, grads


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
@pytest.mark.parametrize("variant,bidirectional,num_devices", [
    *[(v, d, 8) for v, d in VARIANTS],
    # An odd ring: the mask rides both ways round and skips the last left-going visit.
    ("ring", True, 3), pytest.param("gather", False, 3, marks=pytest.mark.slow),
    pytest.param("ring", False, 3, marks=pytest.mark.slow)])
def test_masked_variant_equals_reference_on_the_valid_rows(loss, variant, bidirectional,
                                                           num_devices):
    # Invalid rows are neither positives nor negatives: the loss, accuracy and gradients are
    # those of the valid rows alone, and an invalid row's gradient is exactly 0.
    x, y = _embeddings()
    got = _sharded_masked(loss, variant, bidirectional, _mesh(num_devices, 1, 1), x, y, _VALID)
    _assert_equal_to_reference(loss, got, _masked_reference(loss, x, y, _VALID))
    for g in got[2][:2]:
        assert np.all(np.asarray(g)[~_VALID] == 0.0)


@pytest.mark.parametrize("variant,bidirectional", VARIANTS)
def test_masked_softmax_with_label_smoothing_equals_reference(variant, bidirectional):
    x, y = _embeddings()
    got = _sharded_masked("softmax", variant, bidirectional, _mesh(4, 1, 1), x, y, _VALID, 0.1)
    _assert_equal_to_reference("softmax", got, _masked_reference("softmax", x, y, _VALID, 0.1))


def test_all_true_mask_equals_no_mask(references):
    x, y, refs = references
    for loss in ("softmax", "sigmoid"):
        got = _sharded_masked(loss, "ring", True, _mesh(8, 1, 1), x, y, np.ones(BATCH, bool))
        _assert_equal_to_reference(loss, got, refs[loss])


def test_masked_losses_match_a_numpy_formula():
    # Independent of the JAX code: the CLIP and SigLIP losses written out in NumPy (float64)
    # over the valid rows of the masked batch.
    from vlm_jax.losses.contrastive import sigmoid_loss_on_logits, softmax_loss_on_logits

    x, y = _embeddings(1)
    logits = SCALE * np.float64(x) @ np.float64(y).T
    rows = np.flatnonzero(_VALID)
    sub = logits[np.ix_(rows, rows)]
    lse = lambda a, axis: np.log(np.sum(np.exp(a), axis=axis))
    want_softmax = 0.5 * (np.mean(lse(sub, 1) - np.diag(sub))
                          + np.mean(lse(sub, 0) - np.diag(sub)))
    z = 2 * np.eye(len(rows)) - 1
    want_sigmoid = np.sum(np.log1p(np.exp(-z * (sub + BIAS)))) / len(rows)
    got_softmax, _ = softmax_loss_on_logits(np.float32(logits), valid=_VALID)
    got_sigmoid, _ = sigmoid_loss_on_logits(np.float32(logits + BIAS), valid=_VALID)
    np.testing.assert_allclose(got_softmax, want_softmax, rtol=1e-5)
    np.testing.assert_allclose(got_sigmoid, want_sigmoid, rtol=1e-5)
