"""Shared by the init_from tests: sharded TwoTower train states with random params."""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import common
from vlm_jax import models, parallel
from vlm_jax.convert import convert_hf
from vlm_jax.train_state import TrainState

RULES = common.SHARDING_RULES


def model_config(source) -> dict:
    return convert_hf(str(source)).model


def sharded_state(config: dict, vocab_size: int = 64, seed: int = 0):
    """(model, a TwoTower train state sharded over 8 devices: embed split 4 ways by fsdp)."""
    return _cached_state(json.dumps(config, sort_keys=True), vocab_size, seed)


@functools.cache  # one model trace per config: load_into returns a new state
def _cached_state(config: str, vocab_size: int, seed: int):
    """Random params placed in the shardings a train state would give them (no init compile)."""
    model = models.build_model(ml_collections.ConfigDict(json.loads(config)), vocab_size)
    mesh = parallel.make_mesh(dict(data=2, fsdp=4, tensor=1))
    init = lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.uint8),
                              jnp.zeros((1, 8), jnp.int32))["params"]
    with nn.logical_axis_rules(RULES):
        boxed = jax.eval_shape(init)
    shardings = parallel.logical_shardings(boxed, mesh, RULES)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda shape, sharding: jax.device_put(
            rng.normal(size=shape.shape).astype(shape.dtype), sharding),
        nn.unbox(boxed), shardings)
    return model, TrainState(jnp.zeros((), jnp.int32), params, (), jax.random.PRNGKey(0))


def unflatten(flat: dict) -> dict:
    """{"a/b/c": leaf} -> {"a": {"b": {"c": leaf}}}."""
    tree = {}
    for path, leaf in flat.items():
        *parents, name = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[name] = leaf
    return tree
