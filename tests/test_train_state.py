"""The shared train step and optimizer: gradient accumulation, weight-decay mask, schedule."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm_jax import optim, parallel
from vlm_jax.train_state import create_train_state, make_train_step

RULES = (("embed", None), ("mlp", None))


class Regressor(nn.Module):
    @nn.compact
    def __call__(self, x):
        kernel_init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed", "mlp"))
        return nn.Dense(1, kernel_init=kernel_init)(x)[:, 0]


def _optim_config(**overrides):
    defaults = dict(name="adamw", lr=0.1, warmup_steps=2, end_lr_ratio=0.0, b1=0.9, b2=0.95,
                    eps=1e-8, weight_decay=0.1, grad_clip_norm=0.0)
    return ml_collections.ConfigDict({**defaults, **overrides})


def _run(accum_steps, batch, steps=3):
    """(final state, per-step metrics, params before each step as NumPy) of `steps` steps.

    Warm-up 0: the first step already trains at the full learning rate, so a wrong first
    update cannot hide behind lr 0.
    """
    model = Regressor()
    tx, schedule = optim.make_optimizer(_optim_config(warmup_steps=0), 10)
    mesh = parallel.make_mesh(dict(data=-1, fsdp=1, tensor=1), jax.devices()[:1])

    def loss_fn(params, batch, rng):  # per-example mean: accumulation must not change it
        loss = jnp.mean((model.apply({"params": params}, batch["x"]) - batch["y"]) ** 2)
        return loss, {"loss": loss}

    init = lambda rng: model.init(rng, jnp.zeros((1, 4)))["params"]
    state, shardings, _ = create_train_state(init, tx, 0, mesh, RULES)
    step = make_train_step(loss_fn, tx, schedule, accum_steps, shardings, mesh)
    history, params_before = [], []
    for _ in range(steps):
        params_before.append(jax.tree_util.tree_map(np.asarray, state.params))
        state, metrics = step(state, parallel.global_batch(batch, mesh))
        history.append({k: float(v) for k, v in metrics.items()})
    return state, history, params_before


def _numpy_grad_norm(params, batch) -> float:
    """|d/dW, d/db of mean((x W + b - y)^2)|: the raw gradient norm, before any clipping."""
    kernel, bias = params["Dense_0"]["kernel"][:, 0], params["Dense_0"]["bias"][0]
    residual = batch["x"] @ kernel + bias - batch["y"]  # [B]
    grad_kernel = 2 * batch["x"].T @ residual / len(residual)  # [4]
    grad_bias = 2 * residual.mean()
    return float(np.sqrt(np.sum(grad_kernel**2) + grad_bias**2))


def test_gradient_accumulation_equals_one_big_batch():
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 4)).astype(np.float32),
             "y": rng.normal(size=(8,)).astype(np.float32)}
    full, full_history, _ = _run(1, batch)
    accumulated, accumulated_history, params_before = _run(4, batch)
    assert full_history[0]["train/lr"] == np.float32(0.1)  # the first step moves the params
    # Raw gradients: Adam's update barely depends on the gradient's scale, so compare the norm
    # of the averaged gradient itself (a sum over micro-batches would be 4x) at every step,
    # against NumPy on the parameters that step started from.
    for step in range(3):
        want = _numpy_grad_norm(params_before[step], batch)
        np.testing.assert_allclose(accumulated_history[step]["train/grad_norm"], want,
                                   rtol=1e-5)
        np.testing.assert_allclose(full_history[step]["train/grad_norm"], want, rtol=1e-5)
        np.testing.assert_allclose(full_history[step]["train/loss"],
                                   accumulated_history[step]["train/loss"], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(full.params),
                    jax.tree_util.tree_leaves(accumulated.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(accumulated.step) == 3


def test_weight_decay_skips_vectors_and_scalars():
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,)), "logit_scale": jnp.ones(())}
    assert optim.decay_mask(params) == {"kernel": True, "bias": False, "logit_scale": False}


def test_schedule_warms_up_linearly_then_decays_to_the_end_ratio():
    config = _optim_config(end_lr_ratio=0.1)
    schedule = optim.learning_rate_schedule(config, total_steps=10)
    np.testing.assert_allclose([schedule(0), schedule(1), schedule(2)], [0.0, 0.05, 0.1], rtol=1e-6)
    # cosine from step 2 to 10: halfway (step 6) is the mean of peak and end
    np.testing.assert_allclose(schedule(6), (0.1 + 0.01) / 2, rtol=1e-5)
    np.testing.assert_allclose(schedule(10), 0.01, rtol=1e-5)

