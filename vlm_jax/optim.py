"""Optimizer from config: AdamW with a weight-decay mask, warmup + cosine, gradient clipping,
and per-parameter rules (freeze, learning-rate multiplier, assign) matched by regex on the path."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.core import meta

from vlm_jax.configlib import ConfigError

FREEZE = "freeze"
# Parameters that are state, not weights (EMA statistics, counters): the loss writes their next
# value through `assignment_term`, and the update is minus the gradient (see make_optimizer).
ASSIGN = "assign"
_LR_RULE = re.compile(r"lr=(.+)")


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `optim.lr`, then cosine decay to `optim.lr * optim.end_lr_ratio`."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim.lr * optim.end_lr_ratio,
    )


def decay_mask(params):
    """Weight decay on matrices (kernels, embeddings) only: not on biases, norms, scale, bias."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def _is_box(node) -> bool:
    return isinstance(node, meta.AxisMetadata)


def param_path(path: tuple) -> str:
    """"image_tower/encoder/block0/attn/query/kernel": the dict keys of a tree path, joined.

    Other keys (the `.value` of a logically-boxed parameter) are skipped, so boxed and unboxed
    params have the same paths.
    """
    return "/".join(str(key.key) for key in path if isinstance(key, jax.tree_util.DictKey))


def parse_rule(rule: str) -> float | None:
    """A rule's learning-rate multiplier: "freeze" -> None, "lr=0.1" -> 0.1 (see rule_group for
    "assign", which has none)."""
    if rule == FREEZE:
        return None
    match = _LR_RULE.fullmatch(rule)
    try:
        multiplier = float(match.group(1)) if match else -1.0
    except ValueError:
        multiplier = -1.0
    if not (math.isfinite(multiplier) and multiplier >= 0):
        raise ConfigError(
            f"unknown parameter rule {rule!r}; use 'freeze', 'assign' or "
            "'lr=<multiplier >= 0>' (e.g. lr=0.1)")
    return multiplier


def group_name(multiplier: float | None) -> str:
    """The optimizer group of a multiplier: "freeze", or "lr=<m>" (m = 1 for unmatched params)."""
    return FREEZE if multiplier is None else f"lr={multiplier!r}"


def rule_group(rule: str) -> str:
    """The optimizer group of a rule: "assign", or group_name of its multiplier."""
    return ASSIGN if rule == ASSIGN else group_name(parse_rule(rule))


def assignment_term(params, targets) -> jax.Array:
    """A loss term of value 0 whose gradient w.r.t. each leaf of `params` is (param - target).

    For parameters under the rule "assign" (update = -gradient), adding it to the loss makes the
    train step leave each of them equal to its target (`targets`: the same tree structure; no
    gradient flows into it). With gradient accumulation the micro-batches' targets are averaged.
    """
    param_leaves, structure = jax.tree_util.tree_flatten(params)
    target_leaves = structure.flatten_up_to(targets)
    term = jnp.zeros((), jnp.float32)
    for param, target in zip(param_leaves, target_leaves):
        step = jax.lax.stop_gradient(param - target)
        # (param - stop_gradient(param)) is exactly 0, and its derivative w.r.t. param is 1.
        term = term + jnp.sum(step * (param - jax.lax.stop_gradient(param)))
    return term


def param_groups(params, param_rules: Sequence[tuple[str, str]]):
    """A tree like `params` holding each parameter's group name (see `group_name`).

    Each "/"-joined path is matched (re.fullmatch) against the rules' regexes in order; the
    first match decides, unmatched parameters train at the full rate. A rule that decides no
    parameter is an error: its regex is most likely a typo.
    """
    rules = [(re.compile(pattern), rule_group(rule)) for pattern, rule in param_rules]
    decided = [0] * len(rules)

    def group(path, _):
        name = param_path(path)
        for index, (pattern, group_of_rule) in enumerate(rules):
            if pattern.fullmatch(name):
                decided[index] += 1
                return group_of_rule
        return group_name(1.0)

    # A logically-boxed parameter gets one label for the whole box: masks built from the labels
    # then replace the box, not its value, so the optimizer state's boxes stay consistent.
    groups = jax.tree_util.tree_map_with_path(group, params, is_leaf=_is_box)
    unused = [pattern for (pattern, _), count in zip(param_rules, decided) if not count]
    if unused:
        paths = [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        tops = sorted({path.split("/")[0] for path in paths})
        raise ConfigError(
            f"optim.param_rules: {unused} match no parameter (or only ones an earlier rule "
            f"claimed); paths look like {paths[0]!r}, top-level names: {', '.join(tops)}")
    return groups


def stop_frozen_gradients(params, param_rules: Sequence[tuple[str, str]]):
    """`params` with every frozen parameter behind `jax.lax.stop_gradient`.

    Applied inside the loss, frozen parameters become constants to autodiff: no gradient is
    computed for them, nor any backward pass only they need, so a locked tower costs its
    forward alone (LiT's saving) instead of forward + backward.
    """
    if not any(rule == FREEZE for _, rule in param_rules):
        return params
    groups = param_groups(params, param_rules)
    return jax.tree_util.tree_map(
        lambda p, g: jax.lax.stop_gradient(p) if g == FREEZE else p, params, groups)


def make_optimizer(
    optim: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The config's optimizer and its learning-rate schedule (logged as `train/lr`).

    `optim.param_rules` (default none): `(regex, rule)` pairs, rule "freeze" (no update, no
    optimizer state), "lr=<m>" (updates scaled by m; AdamW's decoupled weight decay too) or
    "assign" (update = -gradient: no Adam, no decay, no schedule, outside the global-norm clip;
    with `assignment_term` in the loss the parameter takes the value the loss computed).
    """
    if optim.name != "adamw":
        raise ValueError(f"optim.name {optim.name!r} is not supported; use adamw")
    schedule = learning_rate_schedule(optim, total_steps)
    adamw = lambda: optax.adamw(
        schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
        weight_decay=optim.weight_decay, mask=decay_mask,
    )
    clip = [optax.clip_by_global_norm(optim.grad_clip_norm)] if optim.grad_clip_norm > 0 else []
    param_rules = tuple(tuple(rule) for rule in optim.get("param_rules", ()))
    if not param_rules:
        return optax.chain(*clip, adamw()), schedule

    multipliers = dict.fromkeys(
        [1.0, *(parse_rule(rule) for _, rule in param_rules if rule != ASSIGN)])
    groups = {}
    if any(rule == ASSIGN for _, rule in param_rules):
        groups[ASSIGN] = optax.scale(-1.0)  # keeps no state
    for multiplier in multipliers:
        if multiplier is None:
            groups[FREEZE] = optax.set_to_zero()  # keeps no state
        elif multiplier == 1.0:
            groups[group_name(multiplier)] = adamw()
        else:
            groups[group_name(multiplier)] = optax.chain(adamw(), optax.scale(multiplier))
    labels = lambda params: param_groups(params, param_rules)
    is_frozen = lambda params: jax.tree_util.tree_map(lambda g: g == FREEZE, labels(params))
    # Frozen gradients are zeroed before clipping, so they do not shrink the trained ones.
    zero_frozen = [optax.masked(optax.set_to_zero(), is_frozen)] if FREEZE in groups else []
    if clip and ASSIGN in groups:
        # An assigned parameter's gradient is its step to the target: clipping would shorten it,
        # and its size would shrink the trained parameters' clip.
        is_trained = lambda params: jax.tree_util.tree_map(lambda g: g != ASSIGN, labels(params))
        clip = [optax.masked(clip[0], is_trained)]
    return optax.chain(*zero_frozen, *clip, optax.multi_transform(groups, labels)), schedule
