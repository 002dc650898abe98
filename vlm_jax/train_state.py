"""The train state (one pytree) and the jitted train step shared by every trainer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlm_jax import optim, parallel

# loss_fn(params, batch, rng) -> (loss, metrics)
LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # int32 []
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2]: the run's base key; step keys are fold_in(rng, step)


def create_train_state(
    init_params: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    seed: int,
    mesh: Mesh,
    rules,
) -> tuple[TrainState, TrainState, TrainState]:
    """Shape-first sharded init; returns (state, state_shardings, abstract_state).

    `init_params(rng)` returns logically-boxed params (flax `init(...)["params"]`). The shapes
    are traced first, shardings derived from the logical names, then init runs under jit with
    those output shardings, so no device ever holds the whole model.
    """

    def boxed_state(seed_key):
        init_key, run_key = jax.random.split(seed_key)
        params = init_params(init_key)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), run_key)

    seed_key = jax.random.PRNGKey(seed)
    boxed_abstract = jax.eval_shape(boxed_state, seed_key)
    shardings = parallel.logical_shardings(boxed_abstract, mesh, rules)
    init = jax.jit(lambda k: nn.unbox(boxed_state(k)), out_shardings=shardings)
    state = init(seed_key)
    abstract = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
    return state, shardings, abstract


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int,
    state_shardings: TrainState,
    mesh: Mesh,
    param_rules: Sequence[tuple[str, str]] = (),
    rules: Sequence[tuple[str, object]] | None = None,
):
    """jit(train_step) with explicit shardings and the state donated.

    `rules` (the config's logical sharding rules) place the batch (its `batch` rule) and the
    activations the blocks constrain by logical name; None keeps the default batch axes.

    Parameters that `param_rules` freeze get no gradient (`optim.stop_frozen_gradients`).

    With `grad_accum_steps = k` the batch is split into k micro-batches (each device keeps its
    own examples), gradients are averaged, and the optimizer updates once.
    """

    def grads_and_metrics(params, batch, rng):
        frozen_aware_loss = lambda p: loss_fn(optim.stop_frozen_gradients(p, param_rules),
                                              batch, rng)
        (_, metrics), grads = jax.value_and_grad(frozen_aware_loss, has_aux=True)(params)
        return grads, metrics

    def train_step(state: TrainState, batch: dict):
        if rules is None:
            return unconstrained_train_step(state, batch)
        # Entered while jit traces the step, so the blocks' activation constraints see it.
        with parallel.activation_sharding(mesh, rules):
            return unconstrained_train_step(state, batch)

    def unconstrained_train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        if grad_accum_steps == 1:
            grads, metrics = grads_and_metrics(state.params, batch, rng)
        else:
            k = grad_accum_steps
            # [B, ...] -> [k, B/k, ...] taking every k-th example, so micro-batches stay
            # spread over the devices that hold the batch.
            micro = jax.tree_util.tree_map(
                lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch
            )

            def accumulate(carry, inputs):
                index, micro_batch = inputs
                grads, metrics = grads_and_metrics(
                    state.params, micro_batch, jax.random.fold_in(rng, index)
                )
                return jax.tree_util.tree_map(jnp.add, carry, (grads, metrics)), None

            zeros = jax.tree_util.tree_map(
                lambda s: jnp.zeros(s.shape, s.dtype),
                jax.eval_shape(grads_and_metrics, state.params,
                               jax.tree_util.tree_map(lambda x: x[0], micro), rng),
            )
            total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), micro))
            grads, metrics = jax.tree_util.tree_map(lambda x: x / k, total)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {f"train/{name}": value for name, value in metrics.items()}
        metrics["train/grad_norm"] = optax.global_norm(grads)
        metrics["train/lr"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, parallel.batch_sharding(mesh, rules)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
