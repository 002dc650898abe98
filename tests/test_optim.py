"""Parameter rules: frozen parameters stay bit-identical and keep no optimizer state; learning-
rate multipliers scale the updates; bad rules fail with a message that names them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax._src.interpreters import partial_eval as pe  # dce_jaxpr has no public name

from vlm_jax import configlib, models, optim, parallel
from vlm_jax.train_state import create_train_state, make_train_step
from vlm_jax.trainers import contrastive

BATCH, SIZE, LENGTH, VOCAB = 8, 16, 8, 64
IMAGE_TOWER = "image_tower/.*"


@pytest.fixture(scope="module")
def setup():
    """SigLIP tiny shrunk to width 32, depth 1, and one fixed batch."""
    config = configlib.load_config("configs/siglip.py:tiny")
    for tower in (config.model.image, config.model.text):
        tower.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    config.model.embed_dim = 32
    model = models.build_model(config.model, VOCAB)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    tokens[:, 6:] = 0
    batch = {"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
             "text_tokens": tokens}
    return config, model, batch


def _train(setup, steps=3, **optim_overrides):
    """(initial params, final params, final state) of `steps` real two-tower train steps."""
    config, model, batch = setup
    optim_config = config.optim.copy_and_resolve_references()
    optim_config.update(warmup_steps=1, lr=1e-2, **optim_overrides)
    tx, schedule = optim.make_optimizer(optim_config, 10)
    mesh = parallel.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    rules = parallel.logical_rules(config)
    init = lambda rng: model.init(
        rng, jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8), jnp.zeros((1, LENGTH), jnp.int32))["params"]
    with nn.logical_axis_rules(rules):
        state, shardings, _ = create_train_state(init, tx, 0, mesh, rules)
        initial = jax.tree_util.tree_map(np.array, state.params)
        step = make_train_step(contrastive.make_loss_fn(model, config), tx, schedule, 1,
                               shardings, mesh, param_rules=optim_config.param_rules)
        for _ in range(steps):
            state, _ = step(state, parallel.global_batch(batch, mesh))
    return initial, jax.tree_util.tree_map(np.asarray, state.params), state


def _dot_count(fn, *args) -> int:
    """Matrix products in the traced program of fn(*args) (nested jaxprs included), after dead
    code is removed: a pooled tower's last block traces a full-sequence path that only callers
    of its token outputs keep, and jit drops it as this does."""
    closed = jax.make_jaxpr(fn)(*args)
    live, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    return str(live).count("dot_general")


def test_locked_tower_costs_its_forward_only(setup):
    """Every matmul of a trained tower has two in the backward (w.r.t. input and weight); a
    frozen tower must add none, and the trained projection above it needs only its weight
    gradient: one matmul fewer again."""
    config, model, batch = setup
    images, tokens = jnp.asarray(batch["image"]), jnp.asarray(batch["text_tokens"])
    params = nn.unbox(model.init(jax.random.PRNGKey(0), images, tokens)["params"])
    loss_fn = contrastive.make_loss_fn(model, config)
    rng = jax.random.PRNGKey(1)

    def grad_dots(param_rules):
        loss = lambda p: loss_fn(optim.stop_frozen_gradients(p, param_rules), batch, rng)[0]
        return _dot_count(jax.grad(loss), params)

    text_forward = _dot_count(
        lambda p: model.apply({"params": p}, tokens, method=lambda m, t: m.text_tower(t)[0]),
        params)
    assert text_forward > 0
    assert grad_dots((("text_tower/.*", "freeze"),)) == grad_dots(()) - 2 * text_forward - 1


def _leaves(params, prefix):
    return [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if optim.param_path(path).startswith(prefix)]


def test_frozen_tower_is_bit_identical_after_steps_and_keeps_no_state(setup):
    initial, final, state = _train(setup, param_rules=((IMAGE_TOWER, "freeze"),))
    for before, after in zip(_leaves(initial, "image_tower/"), _leaves(final, "image_tower/")):
        np.testing.assert_array_equal(after, before)
    # ... while everything else trained, but for key biases: their true gradient is 0 (a
    # query's q . b_k is the same for every key, and the softmax drops it), and exactly 0 in
    # the pooled last block, whose one query moves through the key kernel (attend_context).
    trained = [(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(initial)[0]
               if optim.param_path(path).startswith("text_tower/")
               and not optim.param_path(path).endswith("key/bias")]
    final_leaves = {optim.param_path(path): leaf
                    for path, leaf in jax.tree_util.tree_flatten_with_path(final)[0]}
    for path, before in trained:
        assert not np.array_equal(final_leaves[optim.param_path(path)], before), path
    assert not np.array_equal(initial["image_proj"]["kernel"], final["image_proj"]["kernel"])
    # No optimizer state for the frozen tower: Adam's moments cover the other parameters only.
    state_paths = [optim.param_path(path)
                   for path, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    assert state_paths and not [p for p in state_paths if p.startswith("image_tower")]
    moment_size = sum(
        leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
        if any(getattr(key, "name", None) in ("mu", "nu") for key in path))
    trained_size = sum(leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(final)[0]
                       if not optim.param_path(path).startswith("image_tower/"))
    assert moment_size == 2 * trained_size  # mu and nu


def _toy_updates(steps=3, **optim_overrides):
    """(params, updates of the last step) of `steps` optimizer steps on fixed toy gradients."""
    config = ml_collections.ConfigDict(dict(
        name="adamw", lr=0.1, warmup_steps=0, end_lr_ratio=0.0, b1=0.9, b2=0.95, eps=1e-8,
        weight_decay=0.1, grad_clip_norm=1.0))
    config.update(optim_overrides)
    tx, _ = optim.make_optimizer(config, 10)
    rng = np.random.default_rng(0)
    params = {"image_tower": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                              "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
              "text_tower": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)},
              "logit_scale": jnp.asarray(2.3, jnp.float32)}
    state = tx.init(params)
    for step in range(steps):
        scale = 1.0 + step
        grads = jax.tree_util.tree_map(
            lambda p, s=scale: jnp.asarray(rng.normal(size=p.shape) * s, jnp.float32), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, updates


def test_lr_zero_updates_like_freeze():
    # Clipping off: with it, frozen gradients leave the norm but lr=0 ones stay in it.
    frozen, frozen_updates = _toy_updates(
        grad_clip_norm=0.0, param_rules=(("image_tower/.*", "freeze"),))
    zero_lr, zero_updates = _toy_updates(
        grad_clip_norm=0.0, param_rules=(("image_tower/.*", "lr=0"),))
    for update in jax.tree_util.tree_leaves(zero_updates["image_tower"]):
        np.testing.assert_array_equal(update, 0.0)
    assert np.all(np.abs(zero_updates["text_tower"]["kernel"]) > 1e-3)
    for a, b in zip(jax.tree_util.tree_leaves(frozen), jax.tree_util.tree_leaves(zero_lr)):
        np.testing.assert_array_equal(a, b)


def test_lr_multiplier_scales_updates_and_weight_decay_alone():
    # One step: after it the parameters differ, and with them the weight decay.
    _, plain = _toy_updates(steps=1)
    _, scaled = _toy_updates(steps=1, param_rules=(("text_tower/.*", "lr=0.25"),))
    assert np.all(np.abs(plain["text_tower"]["kernel"]) > 1e-3)
    np.testing.assert_allclose(scaled["text_tower"]["kernel"], 0.25 * plain["text_tower"]["kernel"],
                               rtol=1e-6)
    for name in ("image_tower", "logit_scale"):
        for a, b in zip(jax.tree_util.tree_leaves(scaled[name]),
                        jax.tree_util.tree_leaves(plain[name])):
            np.testing.assert_array_equal(a, b)


def test_frozen_gradients_are_zeroed_before_clipping():
    # b1 = b2 = 0 and eps = 1 make Adam's step -lr * g / (|g| + 1), which shows the gradient's
    # scale. The trained gradient (norm 0.5) is under the clip; had the frozen one (norm 500)
    # stayed in the global norm, it would have been scaled down 1000-fold.
    config = ml_collections.ConfigDict(dict(
        name="adamw", lr=0.1, warmup_steps=0, end_lr_ratio=1.0, b1=0.0, b2=0.0, eps=1.0,
        weight_decay=0.0, grad_clip_norm=1.0, param_rules=(("image_tower/.*", "freeze"),)))
    tx, _ = optim.make_optimizer(config, 10)
    params = {"image_tower": {"kernel": jnp.zeros(2)}, "text_tower": {"kernel": jnp.zeros(2)}}
    text_grad = np.array([0.3, 0.4], np.float32)
    grads = {"image_tower": {"kernel": jnp.array([300.0, 400.0])},
             "text_tower": {"kernel": jnp.asarray(text_grad)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["image_tower"]["kernel"], 0.0)
    np.testing.assert_allclose(updates["text_tower"]["kernel"],
                               -0.1 * text_grad / (np.abs(text_grad) + 1.0), rtol=1e-6)


def test_first_matching_rule_decides_and_unmatched_train_at_full_rate():
    params = {"image_tower": {"a": jnp.ones(2), "b": jnp.ones(2)}, "logit_scale": jnp.ones(())}
    groups = optim.param_groups(params, (("image_tower/a", "freeze"), ("image_tower/.*", "lr=0.1")))
    assert groups == {"image_tower": {"a": "freeze", "b": "lr=0.1"}, "logit_scale": "lr=1.0"}


@pytest.mark.parametrize("rule", ["frozen", "lr=", "lr=fast", "lr=-1", "lr=nan", "scale=2"])
def test_unknown_rule_is_named(rule):
    with pytest.raises(ValueError, match=f"unknown parameter rule '{rule}'"):
        optim.parse_rule(rule)


def test_regex_matching_nothing_is_named():
    params = {"image_tower": {"kernel": jnp.ones((2, 2))}, "text_tower": {"kernel": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"\['img/\.\*'\] match no parameter.*image_tower"):
        optim.param_groups(params, (("img/.*", "freeze"),))
    # A rule shadowed by an earlier one decides nothing either.
    with pytest.raises(ValueError, match="text_tower/kernel"):
        optim.param_groups(params, ((".*", "lr=0.5"), ("text_tower/kernel", "freeze")))


def test_lit_configs_lock_a_tower_of_the_built_model():
    for lock, tower in (("image", "image_tower"), ("text", "text_tower")):
        config = configlib.load_config(f"configs/lit.py:tiny,locked={lock}")
        model = models.build_model(config.model, VOCAB)
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                jnp.zeros((1, 32, 32, 3), jnp.uint8), jnp.zeros((1, 24), jnp.int32))
        shapes = shapes["params"]
        groups = optim.param_groups(shapes, config.optim.param_rules)
        for path, group in jax.tree_util.tree_flatten_with_path(groups)[0]:
            frozen = optim.param_path(path).startswith(tower + "/")
            assert (group == "freeze") == frozen, optim.param_path(path)
    # A pretrained tower is loaded for exactly the parameters that are locked.
    config = configlib.load_config("configs/lit.py:tiny,locked=text,init_from=minilm")
    assert (config.init_from, config.init_from_regex) == ("minilm", "text_tower/.*")
    with pytest.raises(configlib.ConfigError, match="locked=.both."):
        configlib.load_config("configs/lit.py:tiny,locked=both")


def test_assignment_term_is_zero_with_the_step_to_the_target_as_gradient():
    params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
    targets = {"a": jnp.array([0.5, 4.0]), "b": jnp.array(-1.0)}
    value, grads = jax.value_and_grad(optim.assignment_term)(params, targets)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grads["a"], [0.5, -6.0])
    np.testing.assert_array_equal(grads["b"], 4.0)


def test_assign_rule_sets_the_target_outside_adam_and_the_clip():
    config = ml_collections.ConfigDict(dict(
        name="adamw", lr=0.1, warmup_steps=0, end_lr_ratio=1.0, b1=0.0, b2=0.0, eps=1.0,
        weight_decay=0.5, grad_clip_norm=1.0, param_rules=(("stats/.*", "assign"),)))
    tx, _ = optim.make_optimizer(config, 10)
    # stats/count is a matrix, so AdamW would decay it if the rule let AdamW near it.
    params = {"stats": {"count": jnp.array([[1.0, 2.0]])}, "kernel": jnp.zeros(2)}
    target = jnp.array([[300.0, -400.0]])
    weight_grad = np.array([0.3, 0.4], np.float32)  # norm 0.5: under the clip

    def loss(p):
        return jnp.sum(p["kernel"] * weight_grad) + optim.assignment_term(p["stats"],
                                                                         {"count": target})

    grads = jax.grad(loss)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["stats"]["count"], target)  # no decay, no Adam, no clip
    # The kernel's step is unclipped by the assigned gradient's size (|g| = 500).
    np.testing.assert_allclose(updates["kernel"], -0.1 * weight_grad / (weight_grad + 1.0),
                               rtol=1e-6)
    assert optim.param_groups(params, config.param_rules)["stats"]["count"] == "assign"
