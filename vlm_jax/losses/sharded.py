"""The contrastive losses as explicit per-device programs (`jax.shard_map`) over the batch axes.

Each function takes what its reference in `contrastive.py` takes, plus the mesh and a variant,
and returns the same `(loss, {"loss", "i2t_accuracy"})`. Images and texts are global arrays
split over `batch_axes` (b = B / n rows per device); the score's parameters are replicated.
`sharded_pair_loss` is the general form: any pair score that scores each (image, text) pair on
its own, e.g. Llip's caption-conditioned cosine, whose text chunks travel with their
embeddings exactly as CLIP's do.

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
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from vlm_jax.losses import contrastive
from vlm_jax.parallel import BATCH_AXES

VARIANTS = ("gspmd", "gather", "ring")
# score(image_rows [b, ...], texts [c, D], params) -> logits [b, c]
PairScore = Callable[[jax.Array, jax.Array, object], jax.Array]


def sharded_softmax_contrastive_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    mesh: Mesh,
    variant: str,
    *,
    batch_axes: Sequence[str] = BATCH_AXES,
    bidirectional: bool = False,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE (equal to `contrastive.softmax_contrastive_loss`) computed by `variant`."""
    return sharded_pair_loss("softmax", image_emb, text_emb, dot_score, {"scale": logit_scale},
                             mesh, variant, batch_axes=batch_axes, bidirectional=bidirectional,
                             valid=valid)


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
    valid: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SigLIP loss (equal to `contrastive.sigmoid_contrastive_loss`) computed by `variant`."""
    return sharded_pair_loss("sigmoid", image_emb, text_emb, dot_score,
                             {"scale": logit_scale, "bias": logit_bias}, mesh, variant,
                             batch_axes=batch_axes, bidirectional=bidirectional, valid=valid)


def dot_score(image_emb: jax.Array, text_emb: jax.Array, params: dict) -> jax.Array:
    """CLIP / SigLIP pair logits t x.y (+ b): [Bi, D] x [Bt, D] -> [Bi, Bt]."""
    return params["scale"] * image_emb @ text_emb.T + params.get("bias", 0.0)


def sharded_pair_loss(
    name: str,
    image_rows: jax.Array,
    text_emb: jax.Array,
    score: PairScore,
    score_params,
    mesh: Mesh,
    variant: str,
    *,
    batch_axes: Sequence[str] = BATCH_AXES,
    bidirectional: bool = False,
    label_smoothing: float = 0.0,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The `name` ("softmax" | "sigmoid") loss of the logits `score(image_rows, text_emb,
    score_params)` [B, B], equal to `contrastive.LOSSES_ON_LOGITS[name]`, computed by `variant`.
    `label_smoothing` (softmax only) as in `contrastive.softmax_loss_on_logits`.

    `score` must score every (image row, text) pair independently (so a block of rows against a
    chunk of texts is that block of the logits): `image_rows` [B, ...] are per-image inputs
    (an embedding, or Llip's K mixture vectors), `score_params` a pytree of replicated
    parameters (scale, bias, Llip's attention kernels) that gets gradients like the rest.

    `valid` bool [B] (None: every row) keeps only the valid pairs: an invalid row is neither a
    positive nor a negative, gets gradient 0, and the loss and accuracy are normalised by the
    number of valid rows (the loss of the valid rows alone; every variant alike). The mask is
    split like the rows, and in the ring it travels with its texts.
    """
    _check_variant(variant)
    if name not in contrastive.LOSSES_ON_LOGITS:
        raise ValueError(f"contrastive loss {name!r} must be one of "
                         f"{', '.join(contrastive.LOSSES_ON_LOGITS)}")
    if label_smoothing and name != "softmax":
        raise ValueError(f"label_smoothing is defined for the softmax loss only, not {name!r}")
    smoothing = dict(label_smoothing=label_smoothing) if name == "softmax" else {}
    if variant == "gspmd":
        return contrastive.LOSSES_ON_LOGITS[name](score(image_rows, text_emb, score_params),
                                                  **smoothing, valid=valid)
    if valid is None:
        valid = jnp.ones(image_rows.shape[:1], bool)
    axes = tuple(batch_axes)
    n = _num_shards(mesh, axes)
    body = {("softmax", "gather"): _softmax_gather, ("sigmoid", "gather"): _sigmoid_gather,
            ("softmax", "ring"): _softmax_ring, ("sigmoid", "ring"): _sigmoid_ring}[name, variant]
    options = dict(bidirectional=bidirectional) if variant == "ring" else {}
    options.update(smoothing)
    per_device = functools.partial(body, score=score, axes=axes, n=n, **options)
    return _on_mesh(per_device, mesh, axes)(image_rows, text_emb, score_params, valid)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"contrastive loss variant {variant!r} must be one of "
                         f"{', '.join(VARIANTS)}")


def _num_shards(mesh: Mesh, axes: tuple[str, ...]) -> int:
    return math.prod(mesh.shape[axis] for axis in axes)


def _on_mesh(per_device, mesh: Mesh, axes: tuple[str, ...]):
    """shard_map: images and texts split over the batch axes, score parameters and results
    replicated.

    A replicated parameter's gradient is the sum of every device's part: the transpose of
    shard_map's implicit broadcast (check_vma) sums it for the gather bodies, and the ring's
    own backward pass sums it explicitly.
    """
    rows = PartitionSpec(axes)
    replicated = PartitionSpec()
    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(rows, rows, replicated, rows),
        out_specs=(replicated, {"loss": replicated, "i2t_accuracy": replicated}),
    )


# Per-device bodies: x [b, ...] this device's images, y [b, D] its texts, p the score's
# parameters, v bool [b] which of this device's rows are valid (its images and its texts),
# n devices in the ring. A block's pair (i, j) counts when both v_i and v_j hold.


def _softmax_gather(x, y, p, v, *, score, axes, n, label_smoothing):
    b = x.shape[0]
    position = lax.axis_index(axes)
    texts = lax.all_gather(y, axes, tiled=True)  # [B, D]
    text_valid = lax.all_gather(v, axes, tiled=True)  # [B]
    count = _valid_count(v, axes)
    logits = score(x, texts, p)  # [b, B]: this device's rows
    keep = v[:, None] & text_valid[None, :]
    kept = contrastive.masked_logits(logits, keep)
    own = position * b + jnp.arange(b)  # labels: this device's texts in the global order
    positive = jnp.take_along_axis(logits, own[:, None], axis=1)[:, 0]
    row_lse = jax.nn.logsumexp(kept, axis=1)
    # Column normalisers need every device's rows: reduce-scatter exp-sums under a shared max,
    # so each device receives the [b] log-sum-exps of its own texts' columns.
    column_partial = jax.nn.logsumexp(kept, axis=0)  # [B]
    column_max = lax.pmax(lax.stop_gradient(column_partial), axes)
    column_sum = lax.psum_scatter(jnp.exp(column_partial - column_max), axes,
                                  scatter_dimension=0, tiled=True)  # [b]
    column_lse = lax.dynamic_slice_in_dim(column_max, position * b, b) + jnp.log(column_sum)
    loss_sum = (0.5 * (_valid_sum(row_lse, v) + _valid_sum(column_lse, v))
                - (1 - label_smoothing) * _valid_sum(positive, v)
                - label_smoothing / count * _valid_sum(logits, keep))  # this block's share
    is_pair = jnp.arange(n * b)[None, :] == own[:, None]
    others = jnp.where(is_pair | ~keep, -jnp.inf, logits)
    return _finish(loss_sum, _count_correct(positive, others.max(axis=1), v), axes, count)


def _sigmoid_gather(x, y, p, v, *, score, axes, n):
    b = x.shape[0]
    texts = lax.all_gather(y, axes, tiled=True)  # [B, D]
    text_valid = lax.all_gather(v, axes, tiled=True)  # [B]
    logits = score(x, texts, p)  # [b, B]
    keep = v[:, None] & text_valid[None, :]
    own = lax.axis_index(axes) * b + jnp.arange(b)
    is_pair = jnp.arange(n * b)[None, :] == own[:, None]
    labels = jnp.where(is_pair, 1.0, -1.0).astype(logits.dtype)
    loss_sum = -_valid_sum(jax.nn.log_sigmoid(labels * logits), keep)
    positive = jnp.take_along_axis(logits, own[:, None], axis=1)[:, 0]
    others = jnp.where(is_pair | ~keep, -jnp.inf, logits)
    return _finish(loss_sum, _count_correct(positive, others.max(axis=1), v), axes,
                   _valid_count(v, axes))


def _softmax_ring(x, y, p, v, *, score, axes, n, bidirectional, label_smoothing):
    ring = functools.partial(_ring, axes=axes, n=n, bidirectional=bidirectional)

    def forward(x, y, p, v):
        # Row log-sum-exps (this device's images) stay; column ones ride with their texts.
        def visit(stay, chunk, column_lse, paired):
            row_lse, pairs, logit_sum = stay
            texts, text_valid = chunk
            logits = score(x, texts, p)  # [b, b]
            keep = v[:, None] & text_valid[None, :]
            kept = contrastive.masked_logits(logits, keep)
            row_lse = jnp.logaddexp(row_lse, jax.nn.logsumexp(kept, axis=1))
            column_lse = jnp.logaddexp(column_lse, jax.nn.logsumexp(kept, axis=0))
            logit_sum = logit_sum + _valid_sum(lax.stop_gradient(logits), keep)
            return (row_lse, _track_pairs(pairs, logits, paired, keep), logit_sum), column_lse

        minus_inf = _fill(x, -jnp.inf)
        (row_lse, (positive, best), logit_sum), column_lse = ring(
            visit, (minus_inf, _no_pairs(x), _fill(x, 0.0).sum()), (y, v), minus_inf,
            merge=jnp.logaddexp)
        uniform_weight = label_smoothing / _valid_count(v, axes)  # e / V on every kept logit
        loss_sum = (0.5 * (_valid_sum(row_lse, v) + _valid_sum(column_lse, v))
                    - (1 - label_smoothing) * _valid_sum(positive, v)
                    - uniform_weight * logit_sum)
        return (loss_sum, _count_correct(positive, best, v)), (x, y, p, v, row_lse, column_lse)

    def block_loss(x, texts, p, column_lse, paired, text_valid, *, row_lse, row_valid,
                   uniform_weight):
        # Holding the normalisers fixed, d/dlogits = 0.5 (softmax_rows + softmax_columns)
        # - (1 - e) pairs - e / V, the block's share of the loss gradient (kept pairs only:
        # the masked logits get no gradient through `masked_logits`).
        logits = score(x, texts, p)
        keep = row_valid[:, None] & text_valid[None, :]
        kept = contrastive.masked_logits(logits, keep)
        loss = 0.5 * (jnp.sum(jnp.exp(kept - row_lse[:, None]))
                      + jnp.sum(jnp.exp(kept - column_lse[None, :])))
        loss = loss - uniform_weight * _valid_sum(logits, keep)
        return loss - jnp.where(paired, (1 - label_smoothing) * _valid_sum(
            jnp.diagonal(logits), row_valid), 0.0)

    def backward(residuals, cotangents):
        x, y, p, v, row_lse, column_lse = residuals
        block = functools.partial(block_loss, row_lse=row_lse, row_valid=v,
                                  uniform_weight=label_smoothing / _valid_count(v, axes))
        return _ring_backward(block, cotangents[0], x, y, p, v, column_lse, ring, axes)

    return _with_ring_gradient(forward, backward, x, y, p, v, axes=axes)


def _sigmoid_ring(x, y, p, v, *, score, axes, n, bidirectional):
    ring = functools.partial(_ring, axes=axes, n=n, bidirectional=bidirectional)

    def forward(x, y, p, v):
        def visit(stay, chunk, travel, paired):
            loss_sum, pairs = stay
            texts, text_valid = chunk
            logits = score(x, texts, p)  # [b, b]
            keep = v[:, None] & text_valid[None, :]
            loss_sum = loss_sum + _sigmoid_nll(logits, paired, keep)
            return (loss_sum, _track_pairs(pairs, logits, paired, keep)), travel

        stay = (_fill(x, 0.0).sum(), _no_pairs(x))
        (loss_sum, (positive, best)), _ = ring(visit, stay, (y, v), None)
        return (loss_sum, _count_correct(positive, best, v)), (x, y, p, v)

    def block_loss(x, texts, p, stats, paired, text_valid, *, row_valid):
        del stats  # the sigmoid loss is a plain sum over pairs: no normalisers
        return _sigmoid_nll(score(x, texts, p), paired, row_valid[:, None] & text_valid[None, :])

    def backward(residuals, cotangents):
        x, y, p, v = residuals
        block = functools.partial(block_loss, row_valid=v)
        return _ring_backward(block, cotangents[0], x, y, p, v, None, ring, axes)

    return _with_ring_gradient(forward, backward, x, y, p, v, axes=axes)


def _sigmoid_nll(logits, paired, keep):
    """-sum log sigmoid(z * logits) over one block's kept pairs; z = +1 on the diagonal of the
    paired block."""
    is_pair = paired & jnp.eye(logits.shape[0], dtype=bool)
    return -_valid_sum(jax.nn.log_sigmoid(jnp.where(is_pair, logits, -logits)), keep)


def _with_ring_gradient(forward, backward, x, y, p, v, *, axes):
    """The ring's loss with its gradient computed by a second ring (`backward`).

    Differentiating through the forward scan would keep every round's received text chunk for
    the backward pass: n [b, D] buffers, memory growing with the ring. Instead the backward
    pass sends the chunks round again, recomputing each [b, b] block (the rematerialisation),
    and each chunk's gradient travels with it back to its owner, so memory stays flat in n.
    The row mask `v` is an input without a gradient (its cotangent is None).
    """

    @jax.custom_vjp
    def ring_loss(x, y, p, v):
        return forward(x, y, p, v)[0]

    ring_loss.defvjp(forward, lambda residuals, cotangents: (*backward(residuals, cotangents),
                                                              None))
    loss_sum, correct = ring_loss(x, y, p, v)
    return _finish(loss_sum, correct, axes, _valid_count(v, axes))


def _ring_backward(block_loss, cotangent, x, y, p, v, text_stats, ring, axes):
    """(dx, dy, dp) of sum over blocks of `block_loss`, scaled by `cotangent`.

    `block_loss(x, texts, p, stats, paired, text_valid)` is one block's loss with any
    normalisers (`stats` of those texts, riding with them with their mask `text_valid`) held
    fixed. The score parameters are marked per-device so their gradients add up locally, then
    are summed over the ring once at the end.
    """
    tree_map = jax.tree_util.tree_map
    p = tree_map(lambda a: lax.pcast(a, axes, to="varying"), p)

    def visit(stay, chunk, dtexts, paired):
        dx, dp = stay
        texts, text_valid, stats = chunk
        _, pullback = jax.vjp(
            lambda x, texts, p: block_loss(x, texts, p, stats, paired, text_valid), x, texts, p)
        dx_block, dtexts_block, dp_block = pullback(cotangent)
        return (dx + dx_block, tree_map(jnp.add, dp, dp_block)), dtexts + dtexts_block

    stay = (jnp.zeros_like(x), tree_map(jnp.zeros_like, p))
    (dx, dp), dy = ring(visit, stay, (y, v, text_stats), jnp.zeros_like(y))
    return dx, dy, tree_map(lambda d: lax.psum(d, axes), dp)


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
    return jnp.full_like(x.reshape(x.shape[0], -1)[:, 0], value, dtype=_accumulator_dtype(x))


def _no_pairs(x):
    """(positive, best_other) trackers before any block is seen."""
    return _fill(x, 0.0), _fill(x, -jnp.inf)


def _track_pairs(pairs, logits, paired, keep):
    """Update each row's own-pair score and its best score among the other kept texts."""
    positive, best = pairs
    logits = lax.stop_gradient(logits)
    is_pair = paired & jnp.eye(logits.shape[0], dtype=bool)
    positive = positive + jnp.where(paired, jnp.diagonal(logits), 0.0)
    best = jnp.maximum(best, jnp.where(is_pair | ~keep, -jnp.inf, logits).max(axis=1))
    return positive, best


def _shift(tree, axes, n, steps: int):
    """Send every array in `tree` `steps` devices along the ring (negative: the other way)."""
    if steps % n == 0:
        return tree
    perm = [(source, (source + steps) % n) for source in range(n)]
    return jax.tree_util.tree_map(lambda a: lax.ppermute(a, axes, perm), tree)


def _valid_sum(values, keep):
    """Sum of `values` where `keep` (a `where`, so a dropped entry passes no gradient)."""
    return jnp.sum(jnp.where(keep, values, 0.0))


def _valid_count(v, axes):
    """The number of valid rows over the whole batch, at least 1 (as in `contrastive`)."""
    return jnp.maximum(lax.psum(jnp.sum(v.astype(jnp.float32)), axes), 1.0)


def _count_correct(positive, best_other, v):
    """How many of this device's valid images score their own text strictly above every
    other kept text."""
    correct = v & (lax.stop_gradient(positive) > lax.stop_gradient(best_other))
    return jnp.sum(correct).astype(jnp.float32)


def _finish(loss_sum, correct, axes, count):
    """Sum the per-device parts over the batch axes and normalise by the number of valid
    rows `count` (global, already summed). Times the reciprocal, as `jnp.mean` rounds (and as
    XLA rounds a division by the constant batch size), so an all-valid mask changes nothing."""
    inverse = 1.0 / count
    loss = lax.psum(loss_sum, axes) * inverse
    accuracy = lax.psum(correct, axes) * inverse
    return loss, {"loss": loss, "i2t_accuracy": accuracy}
