"""The contrastive losses as explicit per-device programs (`jax.shard_map`) over the batch axes.

Each function takes what its reference in `contrastive.py` takes, plus the mesh and a variant,
and returns the same `(loss, {"loss", "i2t_accuracy"})`. Embeddings are global [B, D] arrays
split over `batch_axes` (b = B / n rows per device); scalars are replicated.

    gspmd   the reference under jit on global arrays: XLA picks the collectives.
    gather  all-gather the texts; each device scores its own images against all of them, [b, B].
    ring    text chunks travel a ppermute ring while image chunks stay; a device holds one
            [b, b] block at a time, and per-device memory does not grow with n. The rounds run
            in `lax.scan`; the backward pass is a second ring that recomputes each block
            (rematerialised) rather than keeping anything per round. `bidirectional` sends each
            text chunk both ways round, two blocks a round: ceil(n / 2) rounds instead of n.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from vlm_jax.losses import contrastive
from vlm_jax.parallel import BATCH_AXES

VARIANTS = ("gspmd", "gather", "ring")


def sharded_softmax_contrastive_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    mesh: Mesh,
    variant: str,
    *,
    batch_axes: Sequence[str] = BATCH_AXES,
    bidirectional: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE (equal to `contrastive.softmax_contrastive_loss`) computed by `variant`."""
    _check_variant(variant)
    if variant == "gspmd":
        return contrastive.softmax_contrastive_loss(image_emb, text_emb, logit_scale)
    axes = tuple(batch_axes)
    n = _num_shards(mesh, axes)
    if variant == "gather":
        per_device = lambda x, y, s: _softmax_gather(x, y, s, axes=axes, n=n)
    else:
        per_device = lambda x, y, s: _softmax_ring(
            x, y, s, axes=axes, n=n, bidirectional=bidirectional)
    return _on_mesh(per_device, mesh, axes, num_scalars=1)(image_emb, text_emb, logit_scale)


def sharded_sigmoid_contrastive_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array,
    mesh: Mesh,
    variant: str,
    *,
    batch_axes: Sequence[str] = BATCH_AXES,
    bidirectional: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SigLIP loss (equal to `contrastive.sigmoid_contrastive_loss`) computed by `variant`."""
    _check_variant(variant)
    if variant == "gspmd":
        return contrastive.sigmoid_contrastive_loss(image_emb, text_emb, logit_scale, logit_bias)
    axes = tuple(batch_axes)
    n = _num_shards(mesh, axes)
    if variant == "gather":
        per_device = lambda x, y, s, c: _sigmoid_gather(x, y, s, c, axes=axes, n=n)
    else:
        per_device = lambda x, y, s, c: _sigmoid_ring(
            x, y, s, c, axes=axes, n=n, bidirectional=bidirectional)
    return _on_mesh(per_device, mesh, axes, num_scalars=2)(
        image_emb, text_emb, logit_scale, logit_bias)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"contrastive loss variant {variant!r} must be one of "
                         f"{', '.join(VARIANTS)}")


def _num_shards(mesh: Mesh, axes: tuple[str, ...]) -> int:
    return math.prod(mesh.shape[axis] for axis in axes)


def _on_mesh(per_device, mesh: Mesh, axes: tuple[str, ...], num_scalars: int):
    """shard_map: embeddings split over the batch axes, scalars and results replicated.

    A replicated scalar's gradient is the sum of every device's part: the transpose of
    shard_map's implicit broadcast (check_vma) sums it for the gather bodies, and the ring's
    own backward pass sums it explicitly.
    """
    rows = PartitionSpec(axes)
    replicated = PartitionSpec()
    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(rows, rows) + (replicated,) * num_scalars,
        out_specs=(replicated, {"loss": replicated, "i2t_accuracy": replicated}),
    )


# Per-device bodies: x [b, D] this device's images, y [b, D] its texts, n devices in the ring.


def _softmax_gather(x, y, logit_scale, *, axes, n):
    b = x.shape[0]
    position = lax.axis_index(axes)
    texts = lax.all_gather(y, axes, tiled=True)  # [B, D]
    logits = logit_scale * x @ texts.T  # [b, B]: this device's rows
    own = position * b + jnp.arange(b)  # labels: this device's texts in the global order
    positive = jnp.take_along_axis(logits, own[:, None], axis=1)[:, 0]
    row_lse = jax.nn.logsumexp(logits, axis=1)
    # Column normalisers need every device's rows: reduce-scatter exp-sums under a shared max,
    # so each device receives the [b] log-sum-exps of its own texts' columns.
    column_partial = jax.nn.logsumexp(logits, axis=0)  # [B]
    column_max = lax.pmax(lax.stop_gradient(column_partial), axes)
    column_sum = lax.psum_scatter(jnp.exp(column_partial - column_max), axes,
                                  scatter_dimension=0, tiled=True)  # [b]
    column_lse = lax.dynamic_slice_in_dim(column_max, position * b, b) + jnp.log(column_sum)
    loss_sum = jnp.sum(row_lse - positive) + jnp.sum(column_lse - positive)
    others = jnp.where(jnp.arange(n * b)[None, :] == own[:, None], -jnp.inf, logits)
    return _finish(0.5 * loss_sum, _count_correct(positive, others.max(axis=1)), axes, n * b)


def _sigmoid_gather(x, y, logit_scale, logit_bias, *, axes, n):
    b = x.shape[0]
    texts = lax.all_gather(y, axes, tiled=True)  # [B, D]
    logits = logit_scale * x @ texts.T + logit_bias  # [b, B]
    own = lax.axis_index(axes) * b + jnp.arange(b)
    is_pair = jnp.arange(n * b)[None, :] == own[:, None]
    labels = jnp.where(is_pair, 1.0, -1.0).astype(logits.dtype)
    loss_sum = -jnp.sum(jax.nn.log_sigmoid(labels * logits))
    positive = jnp.take_along_axis(logits, own[:, None], axis=1)[:, 0]
    others = jnp.where(is_pair, -jnp.inf, logits)
    return _finish(loss_sum, _count_correct(positive, others.max(axis=1)), axes, n * b)


def _softmax_ring(x, y, logit_scale, *, axes, n, bidirectional):
    ring = functools.partial(_ring, axes=axes, n=n, bidirectional=bidirectional)

    def forward(x, y, logit_scale):
        # Row log-sum-exps (this device's images) stay; column ones ride with their texts.
        def visit(stay, texts, column_lse, paired):
            row_lse, pairs = stay
            logits = logit_scale * x @ texts.T  # [b, b]
            row_lse = jnp.logaddexp(row_lse, jax.nn.logsumexp(logits, axis=1))
            column_lse = jnp.logaddexp(column_lse, jax.nn.logsumexp(logits, axis=0))
            return (row_lse, _track_pairs(pairs, logits, paired)), column_lse

        minus_inf = _fill(x, -jnp.inf)
        (row_lse, (positive, best)), column_lse = ring(
            visit, (minus_inf, _no_pairs(x)), y, minus_inf, merge=jnp.logaddexp)
        loss_sum = 0.5 * (jnp.sum(row_lse - positive) + jnp.sum(column_lse - positive))
        return (loss_sum, _count_correct(positive, best)), (x, y, logit_scale, row_lse, column_lse)

    def block_loss(x, texts, logit_scale, column_lse, paired, row_lse):
        # Holding the normalisers fixed, d/dlogits = 0.5 (softmax_rows + softmax_columns) - pairs,
        # the block's share of the loss gradient.
        logits = logit_scale * x @ texts.T
        loss = 0.5 * (jnp.sum(jnp.exp(logits - row_lse[:, None]))
                      + jnp.sum(jnp.exp(logits - column_lse[None, :])))
        return loss - jnp.where(paired, jnp.trace(logits), 0.0)

    def backward(residuals, cotangents):
        x, y, logit_scale, row_lse, column_lse = residuals
        block = functools.partial(block_loss, row_lse=row_lse)
        dx, dy, (dscale,) = _ring_backward(block, cotangents[0], x, y, (logit_scale,),
                                           column_lse, ring, axes)
        return dx, dy, dscale

    return _with_ring_gradient(forward, backward, x, y, logit_scale, axes=axes, n=n)


def _sigmoid_ring(x, y, logit_scale, logit_bias, *, axes, n, bidirectional):
    ring = functools.partial(_ring, axes=axes, n=n, bidirectional=bidirectional)

    def forward(x, y, logit_scale, logit_bias):
        def visit(stay, texts, travel, paired):
            loss_sum, pairs = stay
            logits = logit_scale * x @ texts.T + logit_bias  # [b, b]
            loss_sum = loss_sum + _sigmoid_nll(logits, paired)
            return (loss_sum, _track_pairs(pairs, logits, paired)), travel

        stay = (jnp.zeros_like(x[0, 0], dtype=_accumulator_dtype(x)), _no_pairs(x))
        (loss_sum, (positive, best)), _ = ring(visit, stay, y, None)
        return (loss_sum, _count_correct(positive, best)), (x, y, logit_scale, logit_bias)

    def block_loss(x, texts, logit_scale, logit_bias, stats, paired):
        del stats  # the sigmoid loss is a plain sum over pairs: no normalisers
        return _sigmoid_nll(logit_scale * x @ texts.T + logit_bias, paired)

    def backward(residuals, cotangents):
        x, y, logit_scale, logit_bias = residuals
        dx, dy, (dscale, dbias) = _ring_backward(block_loss, cotangents[0], x, y,
                                                 (logit_scale, logit_bias), None, ring, axes)
        return dx, dy, dscale, dbias

    return _with_ring_gradient(forward, backward, x, y, logit_scale, logit_bias, axes=axes, n=n)


def _sigmoid_nll(logits, paired):
    """-sum log sigmoid(z * logits) of one block; z = +1 on the diagonal of the paired block."""
    is_pair = paired & jnp.eye(logits.shape[0], dtype=bool)
    return -jnp.sum(jax.nn.log_sigmoid(jnp.where(is_pair, logits, -logits)))


def _with_ring_gradient(forward, backward, x, y, *scalars, axes, n):
    """The ring's loss with its gradient computed by a second ring (`backward`).

    Differentiating through the forward scan would keep every round's received text chunk for
    the backward pass: n [b, D] buffers, memory growing with the ring. Instead the backward
    pass sends the chunks round again, recomputing each [b, b] block (the rematerialisation),
    and each chunk's gradient travels with it back to its owner, so memory stays flat in n.
    """

    @jax.custom_vjp
    def ring_loss(x, y, *scalars):
        return forward(x, y, *scalars)[0]

    ring_loss.defvjp(forward, backward)
    loss_sum, correct = ring_loss(x, y, *scalars)
    return _finish(loss_sum, correct, axes, n * x.shape[0])


def _ring_backward(block_loss, cotangent, x, y, scalars, text_stats, ring, axes):
    """(dx, dy, dscalars) of sum over blocks of `block_loss`, scaled by `cotangent`.

    `block_loss(x, texts, *scalars, stats, paired)` is one block's loss with any normalisers
    (`stats` of those texts, riding with them) held fixed. The scalars are marked per-device so
    their gradients add up locally, then are summed over the ring once at the end.
    """
    scalars = tuple(lax.pcast(s, axes, to="varying") for s in scalars)

    def visit(stay, chunk, dtexts, paired):
        dx, dscalars = stay
        texts, stats = chunk
        _, pullback = jax.vjp(
            lambda x, texts, *scalars: block_loss(x, texts, *scalars, stats, paired),
            x, texts, *scalars)
        dx_block, dtexts_block, *dscalars_block = pullback(cotangent)
        dscalars = tuple(a + b for a, b in zip(dscalars, dscalars_block))
        return (dx + dx_block, dscalars), dtexts + dtexts_block

    stay = (jnp.zeros_like(x), tuple(jnp.zeros_like(s) for s in scalars))
    (dx, dscalars), dy = ring(visit, stay, (y, text_stats), jnp.zeros_like(y))
    return dx, dy, tuple(lax.psum(d, axes) for d in dscalars)


def _ring(visit, stay, texts, travel, *, axes, n, bidirectional, merge=jnp.add):
    """Shows this device every device's `texts`, its own first; returns (stay, travel).

    `visit(stay, texts, travel, paired) -> (stay, travel)` scores one chunk (`paired`: it is
    this device's own). `stay` accumulates here; `travel` (accumulators starting from their
    identity, or None) rides with the chunk and arrives back at the chunk's owner. Each round
    visits the chunk in hand, then passes it on: n rounds, whose last pass brings the
    accumulators home. Bidirectional (n > 2): a second copy of each chunk goes the other way;
    ceil(n / 2) rounds visit two chunks each (the last one only one when n is odd), and a
    chunk's two accumulators are combined with `merge`.

    Every block is scored inside a loop body of two or more rounds: XLA inlines one-round
    loops, and then it may keep several independent [b, b] blocks alive at once.
    """
    if not bidirectional or n <= 2:
        def one_way_round(carry, round_index):
            stay, (texts, travel) = carry
            stay, travel = visit(stay, texts, travel, round_index == 0)
            return (stay, _shift((texts, travel), axes, n, 1)), None

        (stay, (_, travel)), _ = lax.scan(one_way_round, (stay, (texts, travel)),
                                          jnp.arange(n))
        return stay, travel

    rounds = (n + 1) // 2
    tree_map = jax.tree_util.tree_map

    def two_way_round(carry, round_index):
        stay, right, left = carry

        def visit_copy(stay, copy):  # one block per loop step, as above
            texts, travel, index = copy  # index 0: the right-going copy, 1: the left-going one
            # With n odd, the last left-going chunk is the one the right-going copy just showed.
            skip = (n % 2 == 1) & (round_index == rounds - 1) & (index == 1)
            stay, travel = lax.cond(
                skip,
                lambda stay, texts, travel: (stay, travel),
                lambda stay, texts, travel: visit(stay, texts, travel,
                                                  (round_index == 0) & (index == 0)),
                stay, texts, travel)
            return stay, travel

        texts, travel = tree_map(lambda a, b: jnp.stack([a, b]), right, left)
        stay, travel = lax.scan(visit_copy, stay, (texts, travel, jnp.arange(2)))
        right = _shift(tree_map(lambda a: a[0], (texts, travel)), axes, n, 1)
        left = _shift(tree_map(lambda a: a[1], (texts, travel)), axes, n, -1)
        return (stay, right, left), None

    left = _shift((texts, travel), axes, n, -1)  # the left-going copy starts one step away
    (stay, (_, right_travel), (_, left_travel)), _ = lax.scan(
        two_way_round, (stay, (texts, travel), left), jnp.arange(rounds))
    if travel is None:
        return stay, None
    home = tree_map(merge, _shift(right_travel, axes, n, -rounds),
                    _shift(left_travel, axes, n, rounds + 1))
    return stay, home


def _accumulator_dtype(x):
    return jnp.promote_types(x.dtype, jnp.float32)


def _fill(x, value):
    """A [b] accumulator for this device's rows (built from x: per-device, like the rows)."""
    return jnp.full_like(x[:, 0], value, dtype=_accumulator_dtype(x))


def _no_pairs(x):
    """(positive, best_other) trackers before any block is seen."""
    return _fill(x, 0.0), _fill(x, -jnp.inf)


def _track_pairs(pairs, logits, paired):
    """Update each row's own-pair score and its best score among the other texts."""
    positive, best = pairs
    logits = lax.stop_gradient(logits)
    is_pair = paired & jnp.eye(logits.shape[0], dtype=bool)
    positive = positive + jnp.where(paired, jnp.diagonal(logits), 0.0)
    best = jnp.maximum(best, jnp.where(is_pair, -jnp.inf, logits).max(axis=1))
    return positive, best


def _shift(tree, axes, n, steps: int):
    """Send every array in `tree` `steps` devices along the ring (negative: the other way)."""
    if steps % n == 0:
        return tree
    perm = [(source, (source + steps) % n) for source in range(n)]
    return jax.tree_util.tree_map(lambda a: lax.ppermute(a, axes, perm), tree)


def _count_correct(positive, best_other):
    """How many of this device's images score their own text strictly above every other."""
    correct = lax.stop_gradient(positive) > lax.stop_gradient(best_other)
    return jnp.sum(correct).astype(jnp.float32)


def _finish(loss_sum, correct, axes, global_batch: int):
    """Sum the per-device parts over the batch axes and normalise by the global batch."""
    loss = lax.psum(loss_sum, axes) / global_batch
    accuracy = lax.psum(correct, axes) / global_batch
    return loss, {"loss": loss, "i2t_accuracy": accuracy}
