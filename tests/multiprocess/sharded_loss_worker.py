"""One process of a jax.distributed job comparing the sharded contrastive losses to the reference.

Started by tests/multiprocess/test_sharded_losses_2proc.py through process_group.py. Every
process draws the same seeded full batch, keeps only the rows its devices hold, assembles the
global arrays with `jax.make_array_from_process_local_data` (parallel.global_batch), runs every
variant's loss and gradients on the mesh spanning all processes, and compares them with the
reference computed on one of its own devices from the full batch. It writes the comparison as
JSON; the test judges it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vlm_jax import parallel
from vlm_jax.losses.contrastive import sigmoid_contrastive_loss, softmax_contrastive_loss
from vlm_jax.losses.sharded import (
    sharded_sigmoid_contrastive_loss,
    sharded_softmax_contrastive_loss,
)

BATCH, DIM = 40, 16  # 5 rows per device on 2 processes x 4 devices
SCALE, BIAS = 10.0, -5.0
CASES = [(loss, variant, bidirectional)
         for loss in ("softmax", "sigmoid")
         for variant, bidirectional in (("gspmd", False), ("gather", False), ("ring", False),
                                        ("ring", True))]
# Gradient tolerance per element: |got - want| <= ATOL + RTOL * |want|.
ATOL, RTOL = 1e-6, 1e-4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--crash-process", type=int, default=-1,
                        help="this process dies right after start-up (tests the watchdog)")
    parser.add_argument("--hang-process", type=int, default=-1,
                        help="this process sleeps after start-up (tests the deadline)")
    args = parser.parse_args()
    started = time.monotonic()

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Short timeouts: a missing peer or a dead one ends the job in seconds, not minutes.
    jax.distributed.initialize(
        coordinator_address=args.coordinator, num_processes=args.num_processes,
        process_id=args.process_id, initialization_timeout=60, heartbeat_timeout_seconds=10,
        shutdown_timeout_seconds=10)
    if args.process_id == args.crash_process:
        os._exit(3)  # a crash: no atexit shutdown barrier, the peer is left waiting
    if args.process_id == args.hang_process:
        time.sleep(3600)  # alive (heartbeats go on), but never joins a collective

    mesh = parallel.make_mesh(dict(data=2, fsdp=-1, tensor=1))
    image_emb, text_emb = _embeddings()
    rows = _process_rows(mesh)
    local = {"image_emb": image_emb[rows], "text_emb": text_emb[rows]}
    global_batch = parallel.global_batch(local, mesh)  # make_array_from_process_local_data

    result = {"process_id": jax.process_index(), "process_count": jax.process_count(),
              "global_devices": jax.device_count(), "local_devices": jax.local_device_count(),
              "local_rows": [int(rows[0]), int(rows[-1]) + 1], "cases": {}}
    references = {loss: _reference(loss, image_emb, text_emb) for loss in ("softmax", "sigmoid")}
    for loss, variant, bidirectional in CASES:
        got = _sharded(loss, variant, bidirectional, mesh, global_batch)
        name = f"{loss}/{variant}" + ("/bidirectional" if bidirectional else "")
        result["cases"][name] = _compare(got, references[loss], loss)
    result["seconds"] = time.monotonic() - started
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    jax.distributed.shutdown()


def _embeddings():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, DIM))
    y = x + 1.2 * rng.normal(size=(BATCH, DIM))
    normalize = lambda a: np.float32(a / np.linalg.norm(a, axis=1, keepdims=True))
    return normalize(x), normalize(y)


def _process_rows(mesh) -> np.ndarray:
    """The global rows this process's devices hold, in global order (what its loader reads)."""
    sharding = parallel.batch_sharding(mesh)
    indices = sharding.addressable_devices_indices_map((BATCH, DIM)).values()
    return np.unique(np.concatenate([np.arange(BATCH)[index[0]] for index in indices]))


def _loss_fn(loss, variant, bidirectional, mesh):
    if loss == "softmax":
        return lambda x, y, s, b: sharded_softmax_contrastive_loss(
            x, y, s, mesh, variant, bidirectional=bidirectional)
    return lambda x, y, s, b: sharded_sigmoid_contrastive_loss(
        x, y, s, b, mesh, variant, bidirectional=bidirectional)


def _sharded(loss, variant, bidirectional, mesh, global_batch):
    """Loss, accuracy and gradients on the global mesh, gathered onto every process."""
    replicated = NamedSharding(mesh, PartitionSpec())
    step = jax.jit(
        jax.value_and_grad(_loss_fn(loss, variant, bidirectional, mesh), argnums=(0, 1, 2, 3),
                           has_aux=True),
        out_shardings=replicated)
    scalars = [jax.device_put(np.float32(v), replicated) for v in (SCALE, BIAS)]
    (value, metrics), grads = step(global_batch["image_emb"], global_batch["text_emb"], *scalars)
    return float(value), float(metrics["i2t_accuracy"]), [np.asarray(g) for g in grads]


def _reference(loss, image_emb, text_emb):
    """The single-device reference on this process's first device, from the full batch."""
    if loss == "softmax":
        fn = lambda x, y, s, b: softmax_contrastive_loss(x, y, s)
    else:
        fn = sigmoid_contrastive_loss
    device = jax.local_devices()[0]
    args = [jax.device_put(v, device)
            for v in (image_emb, text_emb, np.float32(SCALE), np.float32(BIAS))]
    (value, metrics), grads = jax.jit(
        jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True))(*args)
    return float(value), float(metrics["i2t_accuracy"]), [np.asarray(g) for g in grads]


def _compare(got, want, loss) -> dict:
    """Relative loss error, accuracies, and per gradient the worst |error| / tolerance (<= 1)."""
    (value, accuracy, grads), (ref_value, ref_accuracy, ref_grads) = got, want
    names = ["image_emb", "text_emb", "logit_scale", "logit_bias"]
    if loss == "softmax":
        names = names[:3]  # no bias in the softmax loss
    return {
        "loss": value, "reference_loss": ref_value,
        "loss_relative_error": abs(value - ref_value) / abs(ref_value),
        "accuracy": accuracy, "reference_accuracy": ref_accuracy,
        "gradient_error_over_tolerance": {
            name: float(np.max(np.abs(g - r) / (ATOL + RTOL * np.abs(r))))
            for name, g, r in zip(names, grads, ref_grads)},
    }


if __name__ == "__main__":
    main()
